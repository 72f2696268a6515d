"""Random weights at a released Gemma 3 shape, written as the hub writes them, for scale runs (issue 21).

No 1B or 4B weights can be downloaded here, but their shapes are known (`config.PRESETS`). A folder from
`write_random_checkpoint` holds bf16 safetensors shards under the hub's names with
`model.safetensors.index.json`, and what `hf_checkpoint.write_hf_metadata` writes beside any HF folder:
config.json, generation_config.json, tokenizer.model (the bundled 270M's SentencePiece: every Gemma 3 size
shares the 262,144-piece vocabulary) and tokenizer_config.json. Each tensor is drawn on its own from a generator seeded by its name, in
row chunks, so memory stays near one shard and the output does not depend on the order of writing. Scales
follow a trained model's so activations behave: projections N(0, 1/fan_in), the embedding N(0, 1/hidden)
(unit variance after Gemma's sqrt(hidden) scaling), norm weights N(0, 0.5^2) around Gemma's (1 + w).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from tqdm import tqdm

from .atomic import atomic_dir
from .config import PRESETS, GemmaConfig
from .gemma import Gemma
from .hf_checkpoint import hub_name, save_safetensors, write_hf_metadata

SHARD_BYTES = 2 * 2**30  # bf16 bytes per shard: the writer holds one shard in memory
ROWS = 8192  # rows drawn at a time (float32 transient of ROWS x width)


def decoder_shapes(config: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """Our tensor names and shapes for `config`, from the model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = Gemma(config, max_seq_len=8)
    return {name: tuple(t.shape) for name, t in sorted(model.state_dict().items())}


def weight_std(name: str, shape: tuple[int, ...]) -> float:
    """A trained-like scale: norms' w spread around Gemma's (1 + w), the rest 1/sqrt(fan-in) (the table's
    row width)."""
    return 0.5 if name.endswith("norm.weight") else shape[-1] ** -0.5


def random_tensor(name: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """`name`'s bf16 tensor: the same for the same (name, shape, seed), whatever else is written."""
    std = weight_std(name, shape)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()) ^ seed)
    out = torch.empty(shape, dtype=torch.bfloat16)
    rows = out.reshape(-1, shape[-1])
    for start in range(0, rows.shape[0], ROWS):
        chunk = rows[start:start + ROWS]
        chunk.copy_(torch.randn(chunk.shape, generator=generator) * std)
    return out


def write_random_checkpoint(preset: str | GemmaConfig, out: str | Path, seed: int = 0,
                            tokenizer_model: bytes | None = None, overwrite: bool = False,
                            progress: bool = True) -> Path:
    """Write a random text checkpoint at `preset`'s shape ("270m", "1b", "4b" or a GemmaConfig) in hub layout;
    `tokenizer_model` defaults to the bundled 270M's. Returns the folder."""
    config = PRESETS[preset] if isinstance(preset, str) else preset
    if tokenizer_model is None:
        from .bundled import bundled_gguf
        from .gguf_file import read_gguf_tokenizer

        tokenizer_model = read_gguf_tokenizer(bundled_gguf())
    shapes = decoder_shapes(config)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_hf_metadata(tmp, config, tokenizer_model)
        weight_map = {}
        with tqdm(total=len(shapes), desc=f"random weights -> {Path(out).name}", unit="tensor",
                  disable=not progress) as bar:
            for file, names in zip(files, shards):
                tensors = {}
                for name in names:
                    tensors[hub_name(name)] = random_tensor(name, shapes[name], seed)
                    weight_map[hub_name(name)] = file
                    bar.update()
                save_safetensors(tensors, tmp / file, metadata={"format": "pt"})
                del tensors
        total = sum(2 * torch.Size(s).numel() for s in shapes.values())
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
            indent=2) + "\n")
    return Path(out)

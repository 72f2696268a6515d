"""Random weights at a released Gemma 3 shape, written as the hub writes them, for scale runs (issue 21).

No 1B or 4B weights can be downloaded here, but their shapes are known (`config.PRESETS`). A folder from
`write_random_checkpoint` holds bf16 safetensors shards under the hub's names with
`model.safetensors.index.json`, and what `hf_checkpoint.write_hf_metadata` writes beside any HF folder:
config.json, generation_config.json, tokenizer.model (the bundled 270M's SentencePiece: every Gemma 3 size
shares the 262,144-piece vocabulary) and tokenizer_config.json. Each tensor is drawn on its own from a generator seeded by its name, in
row chunks, so memory stays near one shard and the output does not depend on the order of writing. Scales
follow a trained model's so activations behave: projections N(0, 1/fan_in), the embedding N(0, 1/hidden)
(unit variance after Gemma's sqrt(hidden) scaling), norm weights N(0, 0.5^2) around Gemma's (1 + w).
A multimodal preset (the 4B) adds the SigLIP tower and projector in the released Gemma3ForConditionalGeneration
layout (`language_model.model.*`, `vision_tower.vision_model.*`, `multi_modal_projector.*`) with SigLIP's
LayerNorms near 1 and biases near 0.
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
from .vision import vision_shapes
from .hf_checkpoint import hub_name, save_safetensors, write_hf_metadata

SHARD_BYTES = 2 * 2**30  # bf16 bytes per shard: the writer holds one shard in memory
ROWS = 8192  # rows drawn at a time (float32 transient of ROWS x width)


def decoder_shapes(config: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """Our tensor names and shapes for `config`, from the model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = Gemma(config, max_seq_len=8)
    return {name: tuple(t.shape) for name, t in sorted(model.state_dict().items())}


# The SigLIP-So400m tower of the released Gemma 3 4B/12B/27B (their config.json's vision_config) and the
# multimodal token ids of their 262,208-entry vocabulary.
SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
          "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 896, "patch_size": 14,
          "num_channels": 3, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh", "vision_use_head": False}
MULTIMODAL = {"mm_tokens_per_image": 256, "boi_token_index": 255_999, "eoi_token_index": 256_000,
              "image_token_index": 262_144}
MULTIMODAL_PRESETS = {"4b": SIGLIP}


def multimodal_config(config: GemmaConfig, vision: dict, tokens: dict = MULTIMODAL) -> dict:
    """config.json of a Gemma3ForConditionalGeneration: the decoder's config as text_config, `vision` as
    vision_config, and the image token ids."""
    text = {k: v for k, v in config.to_hf_dict().items() if k != "architectures"}
    return {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config":
            {**text, "model_type": "gemma3_text"}, "vision_config": vision, **tokens}


def weight_mean_std(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of a trained-like tensor: Gemma's norms' w spread around its (1 + w), SigLIP's LayerNorm
    weights near 1 and biases near 0, the rest N(0, 1/fan-in) (the table's row width; the projector
    multiplies from the left, the patch convolution reads channels x kernel)."""
    if name.startswith("vision_tower."):
        if name.endswith(".bias"):
            return 0.0, 0.02
        if "layer_norm" in name or "layernorm" in name:
            return 1.0, 0.05
        if name.endswith("patch_embedding.weight"):
            return 0.0, torch.Size(shape[1:]).numel() ** -0.5
        if name.endswith("position_embedding.weight"):
            return 0.0, 0.02
    if name.endswith("norm.weight"):
        return 0.0, 0.5
    if name.endswith("mm_input_projection_weight"):
        return 0.0, shape[0] ** -0.5
    return 0.0, shape[-1] ** -0.5


def random_tensor(name: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """`name`'s bf16 tensor: the same for the same (name, shape, seed), whatever else is written."""
    mean, std = weight_mean_std(name, shape)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()) ^ seed)
    out = torch.empty(shape, dtype=torch.bfloat16)
    rows = out.reshape(-1, shape[-1])
    for start in range(0, rows.shape[0], ROWS):
        chunk = rows[start:start + ROWS]
        chunk.copy_(torch.randn(chunk.shape, generator=generator) * std + mean)
    return out


def _hub_name(name: str, multimodal: bool) -> str:
    """Our tensor name as the released checkpoints spell it (text-only or multimodal layout)."""
    if not multimodal:
        return hub_name(name)
    if name.startswith("vision_tower."):
        return "vision_tower.vision_model." + name[len("vision_tower."):]
    if name.startswith("multi_modal_projector."):
        return name
    return f"language_model.{hub_name(name)}"


def write_random_checkpoint(preset: str | GemmaConfig, out: str | Path, seed: int = 0,
                            tokenizer_model: bytes | None = None, overwrite: bool = False,
                            progress: bool = True, vision: dict | None = None, text_only: bool = False,
                            tokens: dict = MULTIMODAL) -> Path:
    """Write a random checkpoint at `preset`'s shape ("270m", "1b", "4b" or a GemmaConfig) in hub layout:
    multimodal with `vision` (a vision_config dict; the 4B preset's SigLIP unless `text_only`) and the image
    token ids `tokens`; `tokenizer_model` defaults to the bundled 270M's. Returns the folder."""
    config = PRESETS[preset] if isinstance(preset, str) else preset
    if vision is None and isinstance(preset, str) and not text_only:
        vision = MULTIMODAL_PRESETS.get(preset)
    if tokenizer_model is None:
        from .bundled import bundled_gguf
        from .gguf_file import read_gguf_tokenizer

        tokenizer_model = read_gguf_tokenizer(bundled_gguf())
    shapes = decoder_shapes(config)
    mm = None if vision is None else multimodal_config(config, vision, tokens)
    if mm is not None:
        shapes.update(vision_shapes(mm))
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
        if mm is not None:
            (tmp / "config.json").write_text(json.dumps(mm, indent=2, sort_keys=True) + "\n")
        weight_map = {}
        with tqdm(total=len(shapes), desc=f"random weights -> {Path(out).name}", unit="tensor",
                  disable=not progress) as bar:
            for file, names in zip(files, shards):
                tensors = {}
                for name in names:
                    tensors[_hub_name(name, mm is not None)] = random_tensor(name, shapes[name], seed)
                    weight_map[_hub_name(name, mm is not None)] = file
                    bar.update()
                save_safetensors(tensors, tmp / file, metadata={"format": "pt"})
                del tensors
        total = sum(2 * torch.Size(s).numel() for s in shapes.values())
        (tmp / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
            indent=2) + "\n")
    return Path(out)

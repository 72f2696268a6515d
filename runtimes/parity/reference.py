"""The reference an artifact is judged against, built as the artifact computes, and its noise floor.

The reference of an artifact is the model it came from, built the way the artifact really computes
(`manifest.json` "activations": XNNPACK runs every int4 linear on int8 dynamic activations, whatever the
recipe; an ONNX speed-path folder runs its MatMulNBits on int8 activations per block). Its *noise floor*
is the same reference with its embedding scale nudged by 2^-22 (an ulp-sized
change, the size of the float differences between two correct runtimes). A model with int8 dynamic
activations is chaotic at that scale — one flipped rounding moves its logits by O(1) — so no runtime can
agree with it more closely than it agrees with itself.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from gemma_edge.export.manifest import read_manifest
from gemma_edge.model import Gemma, LoadedModel, load
from gemma_edge.model.errors import GemmaEdgeError

from .metrics import first_divergence, top1_agreement


NUDGE = 2.0 ** -22


def reference_for(artifact_dir: str | Path, source: str | Path, max_seq_len: int | None = None) -> LoadedModel:
    """The reference an artifact must match: `source` loaded with the artifact's activation numerics. A
    quantized one keeps its integers as stored and dequantizes each weight when it runs (`lazy`): parity
    calls it a few times per prompt (whole-sequence forwards), so it costs seconds and saves the float
    copy (1.1 GB at 270M, 5 GB at 1B) that would sit beside the runtime's own."""
    from gemma_edge.calibration.checkpoint import is_quantized_checkpoint, load_quantized

    activations, blocks = activation_numerics(artifact_dir)
    source = Path(source)
    if is_quantized_checkpoint(source):
        return load_quantized(source, max_seq_len=max_seq_len, activations=activations, activation_blocks=blocks,
                              lazy=True)
    return load(source, max_seq_len=max_seq_len, progress=False)


def activation_numerics(artifact_dir: str | Path) -> tuple[str, dict[str, int] | None]:
    """How the artifact computes its linears' inputs (manifest "activations") and, for "int8_block", the
    block of each weight's int8 inputs (manifest metadata "activation_blocks")."""
    manifest = read_manifest(artifact_dir, complete=False)
    return manifest.get("activations", "none"), (manifest.get("metadata") or {}).get("activation_blocks")


def reference_logits(model: Gemma, tokens: Sequence[int], prefill: int,
                     image_features: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at positions prefill-1 .. len-1: the ones a runner returns after prefill and each decode."""
    model.reset_caches()
    with torch.no_grad():
        logits = model(torch.tensor([list(tokens)]), torch.arange(len(tokens)), image_features=image_features,
                       logits_from=prefill - 1)
    return logits[0]


def greedy_agreement(model: Gemma, tokens: Sequence[int], continuation: Sequence[int],
                     image_features: torch.Tensor | None = None) -> int:
    """How many tokens of `continuation` (an artifact's greedy tokens after `tokens`) the reference's own
    greedy decode chooses too. One forward over tokens + continuation (teacher forcing): wherever the
    reference's argmax after tokens + continuation[:i] is continuation[i] for every i below k, its greedy
    decode *is* continuation[:k] — the same answer as decoding token by token, in one call instead of one
    per token (each call dequantizes every weight of a lazy reference: minutes per prompt at 1B)."""
    if not continuation:
        return 0
    logits = reference_logits(model, [*tokens, *continuation[:-1]], len(tokens), image_features)
    return first_divergence(logits.float().argmax(-1).tolist(), list(continuation))


def runner_logits(runner, tokens: Sequence[int], prefill: int) -> torch.Tensor:
    """The same positions from a `Runner`: one prefill call, then one decode per remaining token, each written
    into one [positions, vocab] tensor (a list stacked at the end held the logits twice: 0.6 GB more at 4B
    on the 1,088-token prompt)."""
    runner.reset()
    first = runner.prefill(list(tokens[:prefill]))
    out = first.new_empty((len(tokens) - prefill + 1, *first.shape))
    out[0] = first
    for i, t in enumerate(tokens[prefill:], start=1):
        out[i] = runner.decode(t)
    return out


@contextmanager
def nudged(model: Gemma, relative: float = NUDGE) -> Iterator[Gemma]:
    """The model with its embedding scale multiplied by (1 + relative), restored afterwards."""
    original = model.embed_scale
    model.embed_scale = original * (1 + relative)
    try:
        yield model
    finally:
        model.embed_scale = original


def noise_floor(model: Gemma, tokens: Sequence[int], prefill: int, base: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None) -> float:
    """Top-1 agreement of the reference with itself nudged by ±2^-22 and 2^-21 (mean of the three): the
    best any runtime can expect to reach. `base`: the un-nudged `reference_logits`, when already computed."""
    base = reference_logits(model, tokens, prefill, image_features) if base is None else base
    agreements = []
    for relative in (NUDGE, -NUDGE, 2 * NUDGE):
        with nudged(model, relative):
            agreements.append(top1_agreement(base, reference_logits(model, tokens, prefill, image_features)))
    return sum(agreements) / len(agreements)


def reference_path(artifact_dir: str | Path, against: str, source: str | Path | None = None) -> Path:
    """The checkpoint an artifact is compared with: `source`, else the path its manifest records (for
    "float", the float model that quantized checkpoint came from)."""
    folder = Path(artifact_dir)
    if against not in ("quantized", "float"):
        raise GemmaEdgeError(f"--against must be quantized or float, not {against!r}")
    if source is None:
        recorded = read_manifest(folder)["source"].get("path")
        if not isinstance(recorded, str):
            raise GemmaEdgeError(f"{folder / 'manifest.json'}: records no source path (an older export); "
                                 "pass --source PATH")
        source = Path(recorded) if against == "quantized" else _float_source(Path(recorded))
    source = Path(source)
    if not source.exists():
        raise GemmaEdgeError(f"{source}: the reference is not there (recorded in {folder / 'manifest.json'}); "
                             "pass --source PATH")
    return source


def _float_source(quantized: Path) -> Path:
    source_file = quantized / "source.json"
    if not source_file.exists():
        return quantized  # a float export: its source is the float model
    return Path(json.loads(source_file.read_text())["path"])


def reference_vision_encoder(source: Path, activations: str | None, blocks: dict[str, int] | None = None):
    """The reference vision encoder (a quantized checkpoint's with the artifact's activation numerics:
    `activation_numerics`)."""
    from gemma_edge.calibration.checkpoint import QuantizedCheckpoint, is_quantized_checkpoint, is_vision
    from gemma_edge.model.loader import has_vision, load_vision

    if not has_vision(source):
        raise GemmaEdgeError(f"{source}: the reference has no vision tower, so image prompts cannot be checked; "
                             "pass --source with the multimodal checkpoint the artifact came from")
    if is_quantized_checkpoint(source):
        ckpt = QuantizedCheckpoint.load(source, unpack=False, only=is_vision)  # beside the decoder's reference
        return ckpt.build_vision(activations=activations, activation_blocks=blocks, lazy=True)
    return load_vision(source)

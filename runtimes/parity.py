"""Export fidelity: does an artifact compute what its reference computes?

The reference of an artifact is the model it came from, built the way the artifact really computes
(`manifest.json` "activations": XNNPACK runs every int4 linear on int8 dynamic activations, whatever the
recipe). Agreement is judged against the reference's own *noise floor*: the same reference with its
embedding scale nudged by 2^-22 (an ulp-sized change, the size of the float differences between two
correct runtimes). A model with int8 dynamic activations is chaotic at that scale — one flipped rounding
moves its logits by O(1) — so no runtime can agree with it more closely than it agrees with itself.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from gemma_edge.model import Gemma, LoadedModel, load
from gemma_edge.model.errors import GemmaEdgeError

NUDGE = 2.0 ** -22


def reference_for(artifact_dir: str | Path, source: str | Path, max_seq_len: int = 1024) -> LoadedModel:
    """The reference an artifact must match: `source` loaded with the artifact's activation numerics."""
    manifest_path = Path(artifact_dir) / "manifest.json"
    try:
        activations = json.loads(manifest_path.read_text()).get("activations", "none")
    except FileNotFoundError:
        raise GemmaEdgeError(f"{manifest_path}: missing; pass a folder written by gemma-edge export") from None
    source = Path(source)
    if (source / "recipe.json").exists():
        from gemma_edge.calibration.checkpoint import load_quantized

        return load_quantized(source, max_seq_len=max_seq_len, activations=activations)
    return load(source, max_seq_len=max_seq_len, progress=False)


def reference_logits(model: Gemma, tokens: Sequence[int], prefill: int) -> torch.Tensor:
    """Logits at positions prefill-1 .. len-1: the ones a runner returns after prefill and each decode."""
    model.reset_caches()
    with torch.no_grad():
        return model(torch.tensor([list(tokens)]), torch.arange(len(tokens)))[0, prefill - 1:]


def runner_logits(runner, tokens: Sequence[int], prefill: int) -> torch.Tensor:
    """The same positions from a `Runner`: one prefill call, then one decode per remaining token."""
    runner.reset()
    return torch.stack([runner.prefill(list(tokens[:prefill]))] + [runner.decode(t) for t in tokens[prefill:]])


def top1_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int:
    """Tokens until two greedy continuations first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@contextmanager
def nudged(model: Gemma, relative: float = NUDGE) -> Iterator[Gemma]:
    """The model with its embedding scale multiplied by (1 + relative), restored afterwards."""
    original = model.embed_scale
    model.embed_scale = original * (1 + relative)
    try:
        yield model
    finally:
        model.embed_scale = original


def noise_floor(model: Gemma, tokens: Sequence[int], prefill: int) -> float:
    """Top-1 agreement of the reference with itself nudged by 2^-22: the best any runtime can reach."""
    base = reference_logits(model, tokens, prefill)
    with nudged(model):
        return top1_agreement(base, reference_logits(model, tokens, prefill))

"""One generation loop for every backend: anything with `reset`, `prefill` and `decode` can generate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from .errors import GemmaEdgeError


class Runner(Protocol):
    """A model behind a KV cache. `prefill` and `decode` return float logits [vocab] of the last position."""

    def reset(self) -> None: ...

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor: ...

    def decode(self, token: int) -> torch.Tensor: ...


class MultimodalRunner(Runner, Protocol):
    """A runner of a multimodal artifact: `images` holds the preprocessed pixels [N, 3, S, S] for the image
    placeholders of the next prompt (None for a text-only prompt); it is read at the prompt's prefill."""

    images: torch.Tensor | None


def check_token_ids(tokens: Sequence[int], vocab_size: int) -> None:
    """Every runner refuses ids outside the vocabulary with the same one-line error."""
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise GemmaEdgeError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> int:
    logits = logits.float().flatten()
    if not torch.isfinite(logits).all():
        raise FloatingPointError("logits contain NaN or Inf")
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= sampling.top_p  # keep the first token over p
        logits = logits.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(runner: Runner, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
             stop_ids: Sequence[int] = (), on_token: Callable[[int], None] | None = None) -> list[int]:
    """Prefill `prompt`, then sample until a stop id or `max_new_tokens`; returns the new tokens
    (a stop token is included). `on_token` streams each token as it is chosen."""
    generator = torch.Generator().manual_seed(sampling.seed)
    runner.reset()
    logits = runner.prefill(list(prompt))
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = sample(logits, sampling, generator)
        out.append(token)
        if on_token is not None:
            on_token(token)
        if token in stop_ids or len(out) == max_new_tokens:
            break
        logits = runner.decode(token)
    return out

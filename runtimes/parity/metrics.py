"""What parity measures: logit distances, agreement and where greedy continuations part."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def top1_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int:
    """Tokens until two greedy continuations first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def floor_tolerance(floor: float, positions: int, margin: float = 0.01) -> float:
    """How far top-1 may sit below the noise floor: `margin` plus three binomial standard deviations,
    since both agreements are samples over `positions` (at least 1/n variance for a floor of 100%)."""
    return margin + 3 * math.sqrt(max(floor * (1 - floor), 1 / positions) / positions)


def logit_metrics(ref: torch.Tensor, got: torch.Tensor, targets: Sequence[int], chunk: int = 16) -> dict:
    """Teacher-forced metrics over positions [N, vocab] whose next tokens are `targets` (N - 1 of them).
    `finite` is False on any NaN or Inf in the artifact's logits, and then nothing else is computed.
    Positions are taken `chunk` at a time, so the float64 temporaries stay a few hundred MiB whatever the
    prompt's length (a full-vocabulary row is 2 MiB in float64)."""
    if not bool(torch.isfinite(got).all()):
        return {"finite": False}
    n = ref.shape[0]
    target = torch.tensor(list(targets) + [-1])[:, None]  # the last position has no next token
    sums = {"top1": 0.0, "top5": 0.0, "kl": 0.0, "nll_ref": 0.0, "nll": 0.0}
    max_abs, cosine_min = 0.0, math.inf
    for start in range(0, n, chunk):
        r, g, t = ref[start:start + chunk], got[start:start + chunk], target[start:start + chunk]
        ref_logp, got_logp = F.log_softmax(r.double(), -1), F.log_softmax(g.double(), -1)
        max_abs = max(max_abs, (g - r).abs().max().item())
        cosine_min = min(cosine_min, F.cosine_similarity(g.double(), r.double(), dim=-1).min().item())
        sums["top1"] += (r.argmax(-1) == g.argmax(-1)).double().sum().item()
        top5_ref, top5_got = r.topk(5, -1).indices, g.topk(5, -1).indices
        sums["top5"] += (top5_ref[:, :, None] == top5_got[:, None, :]).any(-1).double().sum().item()
        sums["kl"] += (ref_logp.exp() * (ref_logp - got_logp)).sum(-1).sum().item()
        scored = t[:, 0] >= 0
        sums["nll_ref"] -= ref_logp[scored].gather(1, t[scored]).sum().item()
        sums["nll"] -= got_logp[scored].gather(1, t[scored]).sum().item()
    return {
        "finite": True,
        "max_abs_logit": max_abs,
        "cosine_min": cosine_min,
        "top1": sums["top1"] / n,
        "top5": sums["top5"] / (5 * n),  # the share of the reference's top 5 found in the artifact's
        "kl": sums["kl"] / n,
        "perplexity_ref": _exp(sums["nll_ref"] / (n - 1)) if n > 1 else math.nan,
        "perplexity": _exp(sums["nll"] / (n - 1)) if n > 1 else math.nan,
    }


def _exp(x: float) -> float:
    """exp that answers inf instead of raising OverflowError (a damaged artifact's perplexity)."""
    return math.exp(x) if x < 709.0 else float("inf")


def same_continuation(printed: str | list[int], ours: list[int], tokenizer) -> bool:
    """Does a runtime's own loop give our greedy tokens? Token ids are compared as they are (up to a final
    stop id); printed text as `_same_text` does."""
    if isinstance(printed, list):
        def strip(t: list[int]) -> list[int]:
            return t[:-1] if t and t[-1] in tokenizer.stop_ids else t

        return strip(printed) == strip(ours)
    return _same_text(printed, ours, tokenizer)


def _same_text(printed: str, ours: list[int], tokenizer) -> bool:
    """Does a runtime's own loop print our greedy tokens? Runners differ on whether the stop token's text
    is printed; and ExecuTorch's MultimodalRunner prints the token its prefill chooses without checking it
    against the stop ids (it checks the later ones), so after a first-token stop it goes on printing."""
    shown = tokenizer.decode(ours)
    if printed in (shown, tokenizer.decode([t for t in ours if t not in tokenizer.stop_ids])):
        return True
    return len(ours) == 1 and ours[0] in tokenizer.stop_ids and printed.startswith(shown)

"""What a recipe costs: perplexity, KL to the float model and top-1 agreement on held-out text; the
per-tensor weight error table and its plot; for a multimodal checkpoint, the vision tower's own loss."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gemma_edge.model.gemma import Gemma


@dataclass(frozen=True)
class EvalResult:
    tokens: int
    perplexity: float
    kl_to_float: float | None = None  # mean KL(float || model) per position, nats
    top1_agreement: float | None = None  # fraction of positions whose argmax equals the float model's
    reference_perplexity: float | None = None  # the float model's, from the same forward passes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def pool(cls, results: Sequence["EvalResult"]) -> "EvalResult":
        """The result over all the results' positions together (means weighted by their token counts)."""
        n = sum(r.tokens for r in results)

        def mean(values: Sequence[float | None]) -> float | None:
            return None if None in values else sum(v * r.tokens for v, r in zip(values, results)) / n

        def ppl(values: Sequence[float | None]) -> float | None:
            logs = mean([None if v is None else math.log(v) for v in values])
            return None if logs is None else math.exp(logs)

        return cls(n, ppl([r.perplexity for r in results]), mean([r.kl_to_float for r in results]),
                   mean([r.top1_agreement for r in results]), ppl([r.reference_perplexity for r in results]))


def chunks(tokens: Sequence[int], seq_len: int, bos: int, tail: bool = False) -> list[list[int]]:
    """Non-overlapping windows, each starting with BOS so every window is scored the same way; `tail` keeps
    the shorter last window (a short text is scored whole)."""
    body = [t for t in tokens if t != bos]
    step = seq_len - 1
    ends = range(0, len(body) - (1 if tail else step) + 1, step)
    return [[bos] + body[i:i + step] for i in ends]


@torch.no_grad()
def _logits(model: Gemma, seq: list[int]) -> torch.Tensor:
    model.reset_caches()
    out = model(torch.tensor([seq]), torch.arange(len(seq)))[0].float()
    model.reset_caches()
    return out


@torch.no_grad()
def evaluate(model: Gemma, tokens: Sequence[int], seq_len: int = 512, reference: Gemma | None = None,
             progress: bool = True, desc: str = "evaluate", tail: bool = False) -> EvalResult:
    """Teacher-forced over `tokens` in windows of `seq_len` (`tail`: and the shorter last one); with
    `reference`, also KL and agreement."""
    windows = chunks(tokens, seq_len, model.config.bos_token_id, tail)
    if not windows:
        raise ValueError(f"evaluation text has fewer than {seq_len} tokens")
    nll = ref_nll = kl = agree = 0.0
    count = 0
    for seq in tqdm(windows, desc=desc, unit="window", disable=not progress):
        logp = F.log_softmax(_logits(model, seq), -1)[:-1]
        target = torch.tensor(seq[1:])
        nll += -logp.gather(1, target[:, None]).sum().item()
        if reference is not None:
            ref_logp = F.log_softmax(_logits(reference, seq), -1)[:-1]
            ref_nll += -ref_logp.gather(1, target[:, None]).sum().item()
            kl += (ref_logp.exp() * (ref_logp - logp)).sum().item()
            agree += (ref_logp.argmax(-1) == logp.argmax(-1)).sum().item()
        count += len(target)
    if reference is None:
        return EvalResult(count, math.exp(nll / count))
    return EvalResult(count, math.exp(nll / count), kl / count, agree / count, math.exp(ref_nll / count))


def evaluate_domains(model: Gemma, texts: dict[str, list[int]], seq_len: int = 512,
                     reference: Gemma | None = None) -> dict[str, EvalResult]:
    """`evaluate` on each domain's tokens (the short last window kept), plus "all": the pooled result."""
    results = {name: evaluate(model, ids, seq_len, reference, progress=False, tail=True) for name, ids in texts.items()}
    return {**results, "all": EvalResult.pool(list(results.values()))}


@torch.no_grad()
def vision_loss(decoder: Gemma, float_encoder: nn.Module, quantized_encoder: nn.Module, prompt: Sequence[int],
                pixels: torch.Tensor) -> dict:
    """What quantizing the vision tower alone costs, on an image prompt: the soft tokens' relative error and
    worst cosine, and the float `decoder`'s next-token distribution from the first image token on, fed the
    quantized soft tokens against the float ones (KL(float||quantized vision), top-1 agreement)."""
    f, q = float_encoder(pixels), quantized_encoder(pixels)
    start = list(prompt).index(decoder.config.image_token_id)
    ref, got = (F.log_softmax(decoder(torch.tensor([list(prompt)]), torch.arange(len(prompt)),
                                      image_features=x)[0, start:].double(), -1) for x in (f, q))
    decoder.reset_caches()
    return {"images": len(pixels), "soft_tokens": f.shape[0] * f.shape[1], "positions": ref.shape[0],
            "soft_token_relative_error": ((q - f).norm() / f.norm()).item(),
            "soft_token_cosine_min": F.cosine_similarity(q, f, dim=-1).min().item(),
            "kl_to_float": (ref.exp() * (ref - got)).sum(-1).mean().item(),
            "top1_agreement": (ref.argmax(-1) == got.argmax(-1)).double().mean().item()}


def weight_errors(float_weights: dict[str, torch.Tensor], dequantized: dict[str, torch.Tensor]) -> list[dict]:
    """Relative Frobenius error ||w - q(w)|| / ||w|| of every weight present in both."""
    rows = []
    for name in sorted(set(float_weights) & set(dequantized)):
        w, q = float_weights[name].float(), dequantized[name].float()
        rows.append({"name": name, "relative_error": ((q - w).norm() / w.norm().clamp(min=1e-12)).item()})
    return rows


def plot_weight_errors(rows: list[dict], out: Path, title: str) -> Path:
    """One line per projection kind across layers; embedding / LM head as horizontal markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = {}
    singles = {}
    for r in rows:
        parts = r["name"].split(".")
        if parts[0] == "layers" and parts[-1] == "weight" and parts[-2].endswith("_proj"):
            series.setdefault(parts[-2], {})[int(parts[1])] = r["relative_error"]
        elif not r["name"].endswith("norm.weight"):
            singles[r["name"]] = r["relative_error"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for kind, points in sorted(series.items()):
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", markersize=3, label=kind)
    for i, (name, err) in enumerate(sorted(singles.items())):
        ax.axhline(err, linestyle="--", linewidth=1, color=f"C{len(series) + i}", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("relative weight error ||w - q(w)|| / ||w||")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out

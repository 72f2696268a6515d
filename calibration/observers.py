"""Observers: per-layer input activation statistics from calibration sequences."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from gemma_edge.model.atomic import atomic_dir
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.gemma import Gemma
from gemma_edge.model.hf_checkpoint import save_safetensors

from .recipe import LM_HEAD


@dataclass
class LayerStats:
    """Statistics of one weight's *input* activations. Percentiles and outlier ratio (|x| > 6 RMS) are
    averaged over sequences; `mean_sq` (E[x^2] per input feature) weighs the clipping search."""

    absmax: float
    p99_9: float
    p99_99: float
    rms: float
    outlier_ratio: float
    mean_sq: torch.Tensor


class _Accumulator:
    def __init__(self) -> None:
        self.n = 0
        self.absmax = 0.0
        self.sums = {"p99_9": 0.0, "p99_99": 0.0, "rms": 0.0, "outlier_ratio": 0.0}
        self.sq: torch.Tensor | None = None
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1, x.shape[-1])
        a = x.abs().flatten()
        sample = a if a.numel() <= 1 << 24 else a[:: a.numel() // (1 << 24) + 1]
        q = torch.quantile(sample, torch.tensor([0.999, 0.9999]))
        rms = x.pow(2).mean().sqrt().item()
        self.n += 1
        self.absmax = max(self.absmax, a.max().item())
        self.sums["p99_9"] += q[0].item()
        self.sums["p99_99"] += q[1].item()
        self.sums["rms"] += rms
        self.sums["outlier_ratio"] += (a > 6 * rms).float().mean().item()
        sq = x.pow(2).sum(0)
        self.sq = sq if self.sq is None else self.sq + sq
        self.tokens += x.shape[0]

    def result(self) -> LayerStats:
        avg = {k: v / self.n for k, v in self.sums.items()}
        return LayerStats(absmax=self.absmax, mean_sq=self.sq / self.tokens, **avg)


@torch.no_grad()
def observe_inputs(model: Gemma, sequences: Sequence[Sequence[int]], add: Callable[[str, torch.Tensor], None],
                   desc: str = "observe activations", progress: bool = True) -> None:
    """Run the sequences through `model`, calling `add(weight name, input)` for the input of every projection
    and of the LM head (the final norm's output): the one pass calibration statistics and GPTQ's Hessians
    are gathered in."""
    if not sequences:
        raise GemmaEdgeError("calibration set is empty: no sequences to observe")
    hooks = [mod.register_forward_hook(lambda m, inp, out, n=f"{name}.weight": add(n, inp[0]))
             for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and name != "lm_head"]
    hooks.append(model.norm.register_forward_hook(lambda m, inp, out: add(LM_HEAD, out)))
    try:
        for seq in tqdm(sequences, desc=desc, unit="seq", disable=not progress):
            model.reset_caches()
            model(torch.tensor([list(seq)]), torch.arange(len(seq)))
    finally:
        for h in hooks:
            h.remove()
        model.reset_caches()


def collect_stats(model: Gemma, sequences: Sequence[Sequence[int]], progress: bool = True) -> "CalibrationStats":
    """Range, percentile and E[x²] statistics of the input of every projection and of the LM head."""
    accs: dict[str, _Accumulator] = {}
    observe_inputs(model, sequences, lambda name, x: accs.setdefault(name, _Accumulator()).add(x), progress=progress)
    return CalibrationStats({k: a.result() for k, a in accs.items()}, num_sequences=len(sequences),
                            seq_len=len(sequences[0]))


@dataclass
class CalibrationStats:
    """Per-input statistics of every projection; `hessians` (E[x xᵀ] by weight name, for GPTQ) are attached
    by the caller when a recipe needs them and are never saved."""

    layers: dict[str, LayerStats]
    num_sequences: int
    seq_len: int
    hessians: dict[str, torch.Tensor] | None = None

    def importance(self, name: str) -> torch.Tensor | None:
        s = self.layers.get(name)
        return None if s is None else s.mean_sq

    def save(self, out: str | Path, overwrite: bool = False, inputs: tuple = ()) -> Path:
        """stats.json (ranges, percentiles, outlier ratios) + importance.safetensors (E[x^2] per feature)."""
        summary = {"num_sequences": self.num_sequences, "seq_len": self.seq_len, "layers": {
            k: {f: v for f, v in asdict(s).items() if f != "mean_sq"} for k, s in sorted(self.layers.items())}}
        with atomic_dir(out, overwrite=overwrite, inputs=inputs) as tmp:
            (tmp / "stats.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
            save_safetensors({k: s.mean_sq.contiguous() for k, s in sorted(self.layers.items())},
                             tmp / "importance.safetensors")
        return Path(out)

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationStats":
        path = Path(path)
        try:
            summary = json.loads((path / "stats.json").read_text())
            sq = load_file(str(path / "importance.safetensors"))
        except FileNotFoundError as e:
            raise GemmaEdgeError(f"{path}: not a calibration folder ({e.filename} missing); "
                                 "make one with gemma-edge calibrate") from None
        except Exception as e:  # JSON, UTF-8 and safetensors errors: a damaged folder
            raise GemmaEdgeError(f"{path}: damaged calibration folder ({type(e).__name__}: {e}); make it again with "
                                 "gemma-edge calibrate") from None
        try:
            layers = {k: LayerStats(mean_sq=sq[k], **v) for k, v in summary["layers"].items()}
            return cls(layers, summary["num_sequences"], summary["seq_len"])
        except (KeyError, TypeError, AttributeError) as e:
            raise GemmaEdgeError(f"{path / 'stats.json'}: not gemma-edge calibration statistics ({e!r}); make them "
                                 "again with gemma-edge calibrate") from None

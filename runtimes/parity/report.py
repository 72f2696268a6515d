"""A parity report: per-prompt results, the thresholds it was held to, JSON and Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


MIN_LOSS_POSITIONS = 64  # quantization loss is a statistic: prompts with fewer scored positions only report


@dataclass
class PromptResult:
    name: str
    tokens: int
    prefill: int
    metrics: dict
    greedy_tokens: int  # tokens until the artifact's greedy continuation leaves the reference's (32: never)
    runtime_loop_agrees: bool | None = None  # the runtime's own generation loop prints the same tokens
    noise_floor: float | None = None
    gated: bool = True  # False: too few positions to judge a statistic (reported, not checked)


@dataclass
class ParityReport:
    artifact: str
    against: str  # "quantized" (export fidelity) or "float" (quantization loss)
    reference: str
    gate: str  # the thresholds entry used
    thresholds: dict
    prompts: list[PromptResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, d: dict) -> "ParityReport":
        fields = {k: v for k, v in d.items() if k not in ("passed", "prompts")}
        return cls(**fields, prompts=[PromptResult(**p) for p in d["prompts"]])

    def to_markdown(self) -> str:
        lines = [f"# Parity: {self.artifact}", "",
                 f"- against: **{self.against}** reference `{self.reference}`",
                 f"- thresholds: `{self.gate}` {json.dumps(self.thresholds, sort_keys=True)}",
                 f"- result: **{'PASS' if self.passed else 'FAIL'}**", "",
                 "| prompt | tokens (prefill) | max abs dlogit | min cosine | top-1 | top-5 | KL(ref‖art) | "
                 "perplexity ref / art | greedy tokens | runtime loop | noise floor |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in self.prompts:
            m = p.metrics
            if not m.get("finite", True):
                lines.append(f"| {p.name} | {p.tokens} ({p.prefill}) | NaN/Inf | | | | | | | | |")
                continue
            floor = "" if p.noise_floor is None else f"{p.noise_floor:.1%}"
            loop = "" if p.runtime_loop_agrees is None else ("same" if p.runtime_loop_agrees else "DIFFERENT")
            name = p.name if p.gated else f"{p.name} (report only: < {MIN_LOSS_POSITIONS} positions)"
            lines.append(f"| {name} | {p.tokens} ({p.prefill}) | {m['max_abs_logit']:.2e} | {m['cosine_min']:.6f} | "
                         f"{m['top1']:.1%} | {m['top5']:.1%} | {m['kl']:.2e} | {m['perplexity_ref']:.2f} / "
                         f"{m['perplexity']:.2f} | {p.greedy_tokens} | {loop} | {floor} |")
        lines += ["", "Failures:" if self.failures else "No threshold failed."] + [f"- {f}" for f in self.failures]
        return "\n".join(lines) + "\n"


def write_report(report: ParityReport, out: str | Path) -> Path:
    """parity.json + parity.md in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "parity" if report.against == "quantized" else "quantization_loss"
    (out / f"{stem}.json").write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    (out / f"{stem}.md").write_text(report.to_markdown())
    return out

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
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
import torch.nn.functional as F

from gemma_edge.export.manifest import read_manifest, verify_artifact
from gemma_edge.model.digest import content_digest
from gemma_edge.model import Gemma, LoadedModel, ReferenceRunner, generate, load
from gemma_edge.model.errors import GemmaEdgeError

from . import artifact_vision
from .backends import backend_of

if TYPE_CHECKING:
    from PIL import Image

NUDGE = 2.0 ** -22


def reference_for(artifact_dir: str | Path, source: str | Path, max_seq_len: int | None = None) -> LoadedModel:
    """The reference an artifact must match: `source` loaded with the artifact's activation numerics."""
    from gemma_edge.calibration.checkpoint import is_quantized_checkpoint, load_quantized

    activations = read_manifest(artifact_dir, complete=False).get("activations", "none")
    source = Path(source)
    if is_quantized_checkpoint(source):
        return load_quantized(source, max_seq_len=max_seq_len, activations=activations)
    return load(source, max_seq_len=max_seq_len, progress=False)


def reference_logits(model: Gemma, tokens: Sequence[int], prefill: int,
                     image_features: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at positions prefill-1 .. len-1: the ones a runner returns after prefill and each decode."""
    model.reset_caches()
    with torch.no_grad():
        logits = model(torch.tensor([list(tokens)]), torch.arange(len(tokens)), image_features=image_features)
    return logits[0, prefill - 1:].clone()  # a copy: the view would keep every position's logits alive


def runner_logits(runner, tokens: Sequence[int], prefill: int) -> torch.Tensor:
    """The same positions from a `Runner`: one prefill call, then one decode per remaining token."""
    runner.reset()
    return torch.stack([runner.prefill(list(tokens[:prefill]))] + [runner.decode(t) for t in tokens[prefill:]])


def top1_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int:
    """Tokens until two greedy continuations first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def floor_tolerance(floor: float, positions: int, margin: float = 0.01) -> float:
    """How far top-1 may sit below the noise floor: `margin` plus three binomial standard deviations,
    since both agreements are samples over `positions` (at least 1/n variance for a floor of 100%)."""
    return margin + 3 * math.sqrt(max(floor * (1 - floor), 1 / positions) / positions)


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



# ---- the harness: metrics, thresholds, report -------------------------------------------------------

THRESHOLDS = Path(__file__).with_name("thresholds.json")
GREEDY_TOKENS = 32
MIN_LOSS_POSITIONS = 64  # quantization loss is a statistic: prompts with fewer scored positions only report


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


def default_prompts(tokenizer, window: int, max_len: int | None = None) -> list[tuple[str, list[int]]]:
    """Three short prompts (text, code, chat) and one natural passage longer than the sliding window (cut
    to `max_len` tokens where the artifact's context is shorter)."""
    from gemma_edge.calibration.data import held_out_text
    from gemma_edge.model import format_chat

    texts = [("text", "The quick brown fox"), ("code", "def fibonacci(n):\n    "),
             ("chat", format_chat([{"role": "user", "content": "Name three rivers in Europe."}]))]
    out = [(name, tokenizer.encode(t)) for name, t in texts]
    length = window + 64 if max_len is None else min(window + 64, max_len)
    name = f"passage > window ({length} tokens)" if length > window else f"passage ({length} tokens: the context)"
    out.append((name, tokenizer.encode(held_out_text())[:length]))
    return out


def describe_images(count: int) -> str:
    """The default image prompt's text, with `count` images."""
    return "Describe " + "<start_of_image>" * count + " in one sentence."


def colour_bar_card(width: int = 640, height: int = 360) -> "Image.Image":
    """A deterministic 16:9 picture (colour bars over a grey ramp, a dark disc) for the default image prompt."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    bars = np.array([[235, 235, 235], [235, 235, 16], [16, 235, 235], [16, 235, 16], [235, 16, 235], [235, 16, 16],
                     [16, 16, 235]], dtype=np.float64)[x * 7 // width]
    ramp = (x / (width - 1) * 255)[..., None].repeat(3, -1)
    picture = np.where((y < height * 2 // 3)[..., None], bars, ramp)
    disc = (x - width * 0.7) ** 2 + (y - height * 0.4) ** 2 < (height * 0.18) ** 2
    picture[disc] = (40, 30, 20)
    return Image.fromarray(picture.astype(np.uint8))


def image_prompt_for(folder: str | Path, text: str, images: Sequence, pan_and_scan: bool = False,
                     name: str = "image prompt") -> tuple[str, list[int], torch.Tensor]:
    """(name, token ids, pixels) of an image+text prompt, preprocessed as the artifact's manifest records
    (size, mean, std, tokens per image, token ids): `<start_of_image>` in `text` marks each image."""
    from types import SimpleNamespace

    from gemma_edge.model import Tokenizer
    from gemma_edge.model.image_processing import ImageSettings, image_prompt

    folder = Path(folder)
    meta = artifact_vision(folder)
    if meta is None:
        raise GemmaEdgeError(f"{folder}: a text-only artifact takes no images; export a multimodal (4B+) "
                             "checkpoint without --text-only")
    settings = ImageSettings(size=meta["image_size"], mean=tuple(meta["image_mean"]), std=tuple(meta["image_std"]),
                             pan_and_scan=pan_and_scan)
    ids = SimpleNamespace(boi_token_id=meta["boi_token_id"], eoi_token_id=meta["eoi_token_id"],
                          image_token_id=meta["image_token_id"], mm_tokens_per_image=meta["tokens_per_image"])
    tokens, pixels = image_prompt(text, images, settings, Tokenizer.from_file(folder / "tokenizer.model"), ids)
    return name, tokens, pixels


def prompts_from_file(path: str | Path, tokenizer) -> list[tuple[str, list[int]]]:
    """A JSON list of prompt strings."""
    path = Path(path)
    try:
        prompts = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise GemmaEdgeError(f"{path}: not a readable JSON list of prompt strings ({e})") from None
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise GemmaEdgeError(f"{path}: expected a non-empty JSON list of prompt strings")
    return [(f"prompt {i + 1}", tokenizer.encode(p)) for i, p in enumerate(prompts)]


def _runtime_loop(folder: Path, tokenizer):
    """The runtime's own generation loop (its backend's `stock_loop`): (prompt ids, pixels or None) -> its
    greedy continuation, as text (ExecuTorch's runners print text) or token ids (onnxruntime-genai hands them
    over)."""
    return backend_of(folder).stock_loop(folder, tokenizer, artifact_vision(folder), GREEDY_TOKENS)


def load_thresholds(path: str | Path | None = None) -> dict:
    return json.loads(Path(path or THRESHOLDS).read_text())


def run_parity(artifact_dir: str | Path, against: str = "quantized", prompts: list[tuple] | None = None,
               source: str | Path | None = None, thresholds: dict | None = None, runner=None,
               image_prompts: list[tuple] | None = None, verify: bool = True) -> ParityReport:
    """Compare an exported folder with its reference (`against="quantized"`: the model it was exported
    from, built as the artifact computes) or with the float model (`against="float"`).

    `prompts`: (name, token ids) pairs (default: three short prompts and a passage longer than the window,
    cut to the artifact's context); `image_prompts`: (name, token ids, pixels) from `image_prompt_for`
    (default for a multimodal artifact: one prompt on `colour_bar_card()`). `source` overrides the reference
    path (default: recorded in manifest.json, and for "float", in the quantized checkpoint's source.json).
    `runner` overrides the artifact's runner (tests plant faults). `verify` checks every file against the
    manifest first (a mismatch is an error). The verdict fails when the runtime cannot load or run the
    artifact, when any metric is not finite, and when nothing was checked."""
    folder = Path(artifact_dir)
    manifest = verify_artifact(folder) if verify and runner is None else read_manifest(folder)
    recipe = (manifest.get("recipe") or {}).get("name", "float32")
    source = reference_path(folder, against, source)
    table = thresholds or load_thresholds()
    activations = manifest.get("activations", "none")
    if against == "quantized":
        gate = "float32" if recipe == "float32" else ("int8_dynamic" if activations == "int8_dynamic" else "weight_only")
        limits = table["fidelity"][gate]
        reference = reference_for(folder, source)
    else:
        gate = recipe
        if gate not in table["quantization_loss"]:
            raise GemmaEdgeError(f"no quantization_loss thresholds for recipe {recipe!r} in {THRESHOLDS}")
        limits = table["quantization_loss"][gate]
        reference = load(source, progress=False)
    model, tokenizer = reference.model, reference.tokenizer
    section = "fidelity" if against == "quantized" else "quantization_loss"
    report = ParityReport(str(folder), against, str(source), f"{section}.{gate}", limits)
    recorded = manifest["source"].get("sha256")
    if against == "quantized" and isinstance(recorded, str) and content_digest(source) != recorded:
        report.failures.append(f"the reference {source} is not the checkpoint this artifact was exported from "
                               f"(content sha256 {content_digest(source)[:12]}…, manifest {recorded[:12]}…)")
    if runner is None:
        try:
            runner = _open_checked(folder)
        except GemmaEdgeError as e:
            report.failures.append(str(e))
            return report
    multimodal = artifact_vision(folder) is not None
    context = artifact_max_seq_len(manifest) or reference.model.max_seq_len
    prompts = list(prompts or default_prompts(tokenizer, reference.config.sliding_window, context - GREEDY_TOKENS))
    if image_prompts is None and multimodal:
        image_prompts = [image_prompt_for(folder, describe_images(1), [colour_bar_card()], name="image prompt (test card)")]
    prompts += image_prompts or []
    loop = _runtime_loop(folder, tokenizer) if against == "quantized" else None
    encoder = None
    for name, ids, *images in prompts:
        if len(ids) + GREEDY_TOKENS > context:
            report.failures.append(f"{name}: {len(ids)} tokens + {GREEDY_TOKENS} greedy exceed the artifact's "
                                   f"max_seq_len {context}; pass shorter --prompts or export with a longer context")
            continue
        pixels, features, prefill = (images or [None])[0], None, max(1, len(ids) // 2)
        if pixels is not None:
            if not multimodal:
                raise GemmaEdgeError(f"{name}: {folder} is a text-only artifact; image prompts need a multimodal export")
            if encoder is None:
                encoder = _vision_encoder(source, activations if against == "quantized" else None)
            with torch.no_grad():
                features = encoder(pixels)
            last_image = max(i for i, t in enumerate(ids) if t == encoder.config.image_token_id)
            prefill = max(prefill, last_image + 1)  # an image arrives whole, in the prefill
        if multimodal:
            runner.images = pixels
        ref = reference_logits(model, ids, prefill, features)
        result = PromptResult(name, len(ids), prefill, {"finite": False}, greedy_tokens=0,
                              gated=against == "quantized" or len(ids) - prefill + 1 >= MIN_LOSS_POSITIONS)
        try:
            result.metrics = logit_metrics(ref, runner_logits(runner, ids, prefill), ids[prefill:])
            if result.metrics["finite"]:
                expected = generate(ReferenceRunner(model, features), ids, GREEDY_TOKENS, stop_ids=tokenizer.stop_ids)
                ours = generate(runner, ids, GREEDY_TOKENS, stop_ids=tokenizer.stop_ids)
                # equal continuations (both may stop early at <eos>) count as the full budget
                result.greedy_tokens = GREEDY_TOKENS if expected == ours else first_divergence(expected, ours)
                if loop is not None:
                    result.runtime_loop_agrees = _same_continuation(loop(ids, pixels), ours, tokenizer)
                if gate == "int8_dynamic":
                    result.noise_floor = noise_floor(model, ids, prefill, base=ref, image_features=features)
        except Exception as e:  # the runtime's own errors on this artifact: a failed check, reported
            result.metrics["error"] = _first_line(e)
        report.prompts.append(result)
        report.failures += _check(result, limits)
    if not any(p.gated and p.metrics["finite"] for p in report.prompts):
        report.failures.append(f"nothing was checked: no prompt was run to the end with at least {MIN_LOSS_POSITIONS} "
                               "scored positions (quantization loss is a statistic); pass longer --prompts")
    return report


def _open_checked(folder: Path):
    """The artifact's runner, after a separate process loaded it and ran one token (`runtimes.probe`): a
    damaged .pte can abort ExecuTorch, which must fail the check rather than end this process."""
    from . import open_runner, probe  # looked up at call time: tests replace open_runner

    if backend_of(folder).probe_first:
        probe(folder)
    return open_runner(folder, threads=torch.get_num_threads(), verify=False)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def artifact_max_seq_len(manifest: dict) -> int | None:
    """The context an artifact was exported for (the .pte's runner metadata, the ONNX folder's metadata)."""
    meta = manifest.get("metadata", {})
    value = meta.get("get_max_seq_len", meta.get("max_seq_len"))
    return value if isinstance(value, int) and value > 0 else None


def _same_continuation(printed: str | list[int], ours: list[int], tokenizer) -> bool:
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


def _vision_encoder(source: Path, activations: str | None):
    """The reference vision encoder (a quantized checkpoint's with the artifact's activation numerics)."""
    from gemma_edge.model.loader import has_vision, load_vision

    if not has_vision(source):
        raise GemmaEdgeError(f"{source}: the reference has no vision tower, so image prompts cannot be checked; "
                             "pass --source with the multimodal checkpoint the artifact came from")
    return load_vision(source, activations=activations)


def _check(p: PromptResult, limits: dict) -> list[str]:
    m, fails = p.metrics, []
    if "error" in m:
        return [f"{p.name}: the runtime failed on this artifact ({m['error']})"]
    if not m["finite"]:
        return [f"{p.name}: NaN or Inf in the artifact's logits"]
    unbounded = sorted(k for k, v in m.items() if isinstance(v, float) and not math.isfinite(v))
    if unbounded:
        return [f"{p.name}: {', '.join(unbounded)} not finite (the artifact's logits overflow the metric)"]
    if not p.gated:
        return []

    def over(key: str, value: float, limit_key: str, below: bool = False) -> None:
        limit = limits.get(limit_key)
        if limit is not None and (value < limit if below else value > limit):
            fails.append(f"{p.name}: {key} {value:.4g} {'<' if below else '>'} {limit_key} {limit}")

    over("max |dlogit|", m["max_abs_logit"], "max_abs_logit")
    over("top-1", m["top1"], "top1_min", below=True)
    over("top-5", m["top5"], "top5_min", below=True)
    over("KL", m["kl"], "kl_max")
    over("perplexity ratio", m["perplexity"] / m["perplexity_ref"], "perplexity_ratio_max")
    if p.noise_floor is not None and limits.get("top1_below_noise_floor_max") is not None:
        n, f = p.tokens - p.prefill + 1, p.noise_floor
        allowed = floor_tolerance(f, n, limits["top1_below_noise_floor_max"])
        if f - m["top1"] > allowed:
            fails.append(f"{p.name}: top-1 {m['top1']:.4g} is {f - m['top1']:.4g} below the noise floor {f:.4g} "
                         f"(allowed {allowed:.4g}: top1_below_noise_floor_max + 3 sigma over {n} positions)")
    greedy_min = limits.get("greedy_min_tokens")
    if greedy_min is not None and p.greedy_tokens < min(greedy_min, GREEDY_TOKENS):
        fails.append(f"{p.name}: greedy continuation leaves the reference after {p.greedy_tokens} tokens "
                     f"< greedy_min_tokens {greedy_min}")
    if p.runtime_loop_agrees is False:
        fails.append(f"{p.name}: the runtime's own generation loop prints other tokens than its prefill/decode")
    return fails


def assert_parity(artifact_dir: str | Path, **kwargs) -> ParityReport:
    """One line for a user's CI: raises AssertionError listing every failed threshold."""
    report = run_parity(artifact_dir, **kwargs)
    assert report.passed, f"parity failed for {artifact_dir}:\n" + "\n".join(report.failures)
    return report


def write_report(report: ParityReport, out: str | Path) -> Path:
    """parity.json + parity.md in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "parity" if report.against == "quantized" else "quantization_loss"
    (out / f"{stem}.json").write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    (out / f"{stem}.md").write_text(report.to_markdown())
    return out


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

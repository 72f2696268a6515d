"""run_parity: open the artifact (probed first where its runtime may abort), run every prompt through it
and through its reference, hold the results to the thresholds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from gemma_edge.export.manifest import read_manifest, verify_artifact
from gemma_edge.model import generate, load
from gemma_edge.model.digest import content_digest
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.memory import return_freed_memory

from .. import artifact_vision
from ..backends import backend_of
from .metrics import floor_tolerance, logit_metrics, same_continuation
from .prompts import colour_bar_card, default_prompts, describe_images, image_prompt_for
from .reference import (activation_numerics, greedy_agreement, noise_floor, reference_for, reference_logits,
                        reference_path, reference_vision_encoder, runner_logits)
from .report import MIN_LOSS_POSITIONS, ParityReport, PromptResult


THRESHOLDS = Path(__file__).with_name("thresholds.json")
GREEDY_TOKENS = 32


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
    activations, blocks = activation_numerics(folder)
    if against == "quantized":
        gate = "float32" if recipe == "float32" else ("weight_only" if activations == "none" else activations)
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
    encoder = None
    continuations = []  # (result, ids, pixels, the artifact's greedy tokens) for the runtime's own loop
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
                quantized = against == "quantized"  # the float reference has float activations
                encoder = reference_vision_encoder(source, activations if quantized else None,
                                                   blocks if quantized else None)
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
                ours = generate(runner, ids, GREEDY_TOKENS, stop_ids=tokenizer.stop_ids)
                agreed = greedy_agreement(model, ids, ours, features)
                # equal continuations (both may stop early at <eos>) count as the full budget
                result.greedy_tokens = GREEDY_TOKENS if agreed == len(ours) else agreed
                continuations.append((result, ids, pixels, ours))
                if limits.get("top1_below_noise_floor_max") is not None:  # chaotic: judged by its own floor
                    result.noise_floor = noise_floor(model, ids, prefill, base=ref, image_features=features)
        except Exception as e:  # the runtime's own errors on this artifact: a failed check, reported
            result.metrics["error"] = _first_line(e)
        report.prompts.append(result)
        del ref  # a long prompt's reference logits (0.57 GB at 4B) must not outlive it into the next prompt's
        return_freed_memory()
    if against == "quantized" and continuations:
        # the stock loop loads the artifact itself: one copy of it in memory at a time, and no reference
        runner = model = reference = encoder = None
        loop = _runtime_loop(folder, tokenizer)
        for result, ids, pixels, ours in continuations:
            try:
                result.runtime_loop_agrees = same_continuation(loop(ids, pixels), ours, tokenizer)
            except Exception as e:  # as above: the runtime's own error, reported
                result.metrics["error"] = _first_line(e)
    for result in report.prompts:
        report.failures += _check(result, limits)
    if not any(p.gated and p.metrics["finite"] for p in report.prompts):
        report.failures.append(f"nothing was checked: no prompt was run to the end with at least {MIN_LOSS_POSITIONS} "
                               "scored positions (quantization loss is a statistic); pass longer --prompts")
    return report


def assert_parity(artifact_dir: str | Path, **kwargs) -> ParityReport:
    """One line for a user's CI: raises AssertionError listing every failed threshold."""
    report = run_parity(artifact_dir, **kwargs)
    assert report.passed, f"parity failed for {artifact_dir}:\n" + "\n".join(report.failures)
    return report


def _runtime_loop(folder: Path, tokenizer):
    """The runtime's own generation loop (its backend's `stock_loop`): (prompt ids, pixels or None) -> its
    greedy continuation, as text (ExecuTorch's runners print text) or token ids (onnxruntime-genai hands them
    over)."""
    return backend_of(folder).stock_loop(folder, tokenizer, artifact_vision(folder), GREEDY_TOKENS)


def _open_checked(folder: Path):
    """The artifact's runner, after a separate process loaded it and ran one token (`runtimes.probe`): a
    damaged .pte can abort ExecuTorch, which must fail the check rather than end this process."""
    from .. import open_runner, probe  # looked up at call time: tests replace open_runner

    if backend_of(folder).probe_first:
        probe(folder)
    return open_runner(folder, threads=torch.get_num_threads(), verify=False)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def artifact_max_seq_len(manifest: dict) -> int | None:
    """The context an artifact was exported for (the .pte's runner metadata — `get_max_seq_len` is one
    call's length there, at most the context — or the ONNX folder's metadata)."""
    meta = manifest.get("metadata", {})
    value = meta.get("get_max_context_len", meta.get("get_max_seq_len", meta.get("max_seq_len")))
    return value if isinstance(value, int) and value > 0 else None


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

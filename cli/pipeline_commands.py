"""`gemma-edge quickstart` (the whole pipeline on the bundled 270M) and `gemma-edge cache` (the build cache)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gemma_edge.model.errors import GemmaEdgeError

from .common import add_cache_option, add_command, positive_int

MARKER = "quickstart.json"  # marks a folder as a quickstart's own, so a later run may refresh what is in it


def quickstart(out: Path, recipe: str = "int4-block32", runs: int = 3, cache: bool = True) -> int:
    """convert -> quantize -> export .pte and ONNX -> parity (fidelity and quantization loss) -> bench, every
    stage through the build cache (a second run restores what the first built and measured) and in a
    process of its own (the peak is one stage's, not what several left behind)."""
    from gemma_edge.model.atomic import atomic_file, check_output_path
    from gemma_edge.model.bundled import bundled_gguf
    from gemma_edge.pipeline.build import bench_figures, build, parity
    from gemma_edge.pipeline.process import in_fresh_process
    from gemma_edge.runtimes.parity import write_report

    start = time.time()
    check_output_path(out, overwrite=True)  # never the working directory, home, a file, ...
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise GemmaEdgeError(f"{out}: exists and is not a gemma-edge quickstart folder (no {MARKER}); choose "
                             "another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"recipe": recipe}) + "\n")

    def step(what: str) -> None:
        print(f"[{time.time() - start:6.0f} s] {what}", flush=True)

    step(f"convert, quantize ({recipe}), export .pte and ONNX")
    paths = build(bundled_gguf(), out, recipe=recipe, cache=cache, overwrite=True, run=in_fresh_process)
    report_dir = out / "report"
    rows, failed = [], False
    for kind in ("pte", "onnx"):
        for against in ("quantized", "float"):
            step(f"parity of {paths[kind].name} against the {against} reference")
            report = in_fresh_process(parity, paths[kind], against=against, cache=cache)
            write_report(report, report_dir / paths[kind].name)
            failed |= not report.passed
            rows.append((paths[kind].name, against, report))
    benches = {}
    for kind in ("pte", "onnx"):
        step(f"bench {paths[kind].name} ({runs} runs)")
        benches[paths[kind].name] = bench_figures(paths[kind], runs=runs, cache=cache)
    summary = _summary(recipe, rows, benches)
    with atomic_file(report_dir / "README.md") as tmp:
        tmp.write_text(summary)
    with atomic_file(report_dir / "bench.json") as tmp:
        tmp.write_text(json.dumps(benches, indent=2, sort_keys=True) + "\n")
    print(summary)
    step(f"done: report in {report_dir}")
    return 1 if failed else 0


def _summary(recipe: str, rows, benches: dict) -> str:
    lines = [f"# gemma-edge quickstart: Gemma 3 270M, recipe {recipe}", "",
             "Each parity row links its full report (every prompt, metric and threshold).", "",
             "| artifact | against | thresholds | worst top-1 | worst KL | worst max abs dlogit | fewest greedy tokens "
             "| result |", "|---|---|---|---|---|---|---|---|"]
    for name, against, r in rows:
        ms = [p.metrics for p in r.prompts if p.metrics.get("finite")]
        worst = (lambda k, f: f"{f(m[k] for m in ms):.4g}" if ms else "NaN")
        stem = "parity" if against == "quantized" else "quantization_loss"
        lines.append(f"| {name} | {against} | `{r.gate}` | {worst('top1', min)} | {worst('kl', max)} | "
                     f"{worst('max_abs_logit', max)} | {min(p.greedy_tokens for p in r.prompts)} | "
                     f"[{'PASS' if r.passed else 'FAIL'}]({name}/{stem}.md) |")
    lines += ["", "| artifact | size | prefill tok/s (512) | TTFT | decode tok/s | peak RSS | measured |",
              "|---|---|---|---|---|---|---|"]
    for name, b in benches.items():
        lines.append(f"| {name} | {b['file_mib']:.1f} MiB | {b['prefill_tok_s']:.1f} | {b['ttft_s']:.2f} s | "
                     f"{b['decode_tok_s']:.1f} | {b['peak_rss_mib']:.0f} MiB | {b['measured']} |")
    lines += ["", "Bench figures are medians of fresh processes on this host, kept in the build cache with the time "
              "they were measured; `gemma-edge bench FOLDER` measures again."]
    return "\n".join(lines) + "\n"


def cmd_quickstart(args: argparse.Namespace) -> int:
    return quickstart(Path(args.out), recipe=args.recipe, runs=args.runs, cache=not args.no_cache)


def cmd_cache(args: argparse.Namespace) -> None:
    from gemma_edge.pipeline.cache import BuildCache

    store = BuildCache()
    if args.action == "info":
        print(store.info())
    elif args.action == "clear":
        print(f"removed {store.clear()} entries from {store.root}")
    else:
        raise GemmaEdgeError(f"cache: unknown action {args.action!r}; use info or clear")


def register(sub) -> None:
    from gemma_edge.calibration.recipe import PRESETS

    p = add_command(sub, "quickstart", cmd_quickstart, "the whole pipeline on the bundled 270M",
                    "Convert the bundled Gemma 3 270M, quantize it, export .pte and ONNX, check both against "
                    "their quantized reference and against the float model, benchmark them, and write a report "
                    "folder (OUT/report/README.md). Every stage goes through the build cache: a second run "
                    "restores what the first built, checked, and measured (--no-cache builds anew).")
    p.add_argument("--out", default="gemma-edge-quickstart", help="working folder (default: %(default)s)")
    p.add_argument("--recipe", default="int4-block32", choices=sorted(PRESETS),
                   help="quantization preset (default: %(default)s)")
    p.add_argument("--runs", type=positive_int, default=3, help="bench runs per artifact (median)")
    add_cache_option(p)

    p = add_command(sub, "cache", cmd_cache, "show or empty the build cache",
                    "The build cache keeps every stage's output (converted folders, quantized checkpoints, "
                    "artifacts, parity reports, bench figures) under a key of everything that can change it: the "
                    "inputs' content, the options, gemma-edge's own code, the library versions and the platform. "
                    "Location: $GEMMA_EDGE_CACHE/builds (default ~/.cache/gemma_edge/builds); size limit "
                    "$GEMMA_EDGE_CACHE_MAX_GB (default 20), least recently used entries go first.")
    p.add_argument("action", choices=["info", "clear"],
                   help="info: location, entries and size; clear: delete every entry no running process is using")

"""`gemma-edge parity` and `gemma-edge quickstart`: prove an artifact matches, or run the whole pipeline."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import add_command


def cmd_parity(args: argparse.Namespace) -> int:
    from gemma_edge.runtimes.parity import prompts_from_file, run_parity, write_report

    prompts = None
    if args.prompts:
        from gemma_edge.model import Tokenizer

        prompts = prompts_from_file(args.prompts, Tokenizer.from_file(Path(args.artifact) / "tokenizer.model"))
    image_prompts = None
    if args.image:
        from gemma_edge.model.image_processing import open_image
        from gemma_edge.runtimes.parity import describe_images, image_prompt_for

        text = args.image_prompt or describe_images(len(args.image))
        image_prompts = [image_prompt_for(args.artifact, text, [open_image(f) for f in args.image],
                                          pan_and_scan=args.pan_and_scan,
                                          name=f"image prompt ({', '.join(Path(f).name for f in args.image)})")]
    report = run_parity(args.artifact, against=args.against, prompts=prompts, source=args.source,
                        image_prompts=image_prompts)
    print(report.to_markdown())
    if args.report:
        print(f"wrote {write_report(report, args.report)}")
    return 0 if report.passed else 1


def quickstart(out: Path, recipe: str = "int4-block32", runs: int = 3) -> int:
    """convert -> quantize -> export .pte and ONNX -> parity (fidelity and quantization loss) -> bench."""
    from gemma_edge.calibration.ptq import quantize_model
    from gemma_edge.calibration.recipe import PRESETS
    from gemma_edge.export.executorch import export_pte
    from gemma_edge.export.onnx import export_onnx
    from gemma_edge.model import convert, load
    from gemma_edge.model.bundled import bundled_gguf
    from gemma_edge.runtimes.bench import bench
    from gemma_edge.runtimes.parity import run_parity, write_report

    start = time.time()
    out.mkdir(parents=True, exist_ok=True)

    def step(what: str) -> None:
        print(f"[{time.time() - start:6.0f} s] {what}", flush=True)

    float_dir, q_dir = out / "gemma-3-270m", out / f"q-{recipe}"
    if not float_dir.exists():
        step("convert the bundled Gemma 3 270M GGUF to an HF folder")
        convert(bundled_gguf(), float_dir)
    if not q_dir.exists():
        step(f"quantize ({recipe})")
        quantize_model(load(float_dir), PRESETS[recipe]).save(q_dir)
    artifacts = {"pte": (out / f"pte-{recipe}", export_pte), "onnx": (out / f"onnx-{recipe}", export_onnx)}
    for kind, (folder, export) in artifacts.items():
        if not folder.exists():
            step(f"export {kind}")
            export(q_dir, folder)
    report_dir = out / "report"
    rows, failed = [], False
    for kind, (folder, _) in artifacts.items():
        for against in ("quantized", "float"):
            step(f"parity of {folder.name} against the {against} reference")
            report = run_parity(folder, against=against)
            write_report(report, report_dir / folder.name)
            failed |= not report.passed
            rows.append((folder.name, against, report))
    benches = {}
    for kind, (folder, _) in artifacts.items():
        step(f"bench {folder.name} ({runs} runs)")
        benches[folder.name] = bench(folder, runs=runs)
    summary = _summary(recipe, rows, benches, time.time() - start)
    (report_dir / "README.md").write_text(summary)
    (report_dir / "bench.json").write_text(json.dumps(benches, indent=2, sort_keys=True) + "\n")
    print(summary)
    step(f"done: report in {report_dir}")
    return 1 if failed else 0


def _summary(recipe: str, rows, benches: dict, seconds: float) -> str:
    lines = [f"# gemma-edge quickstart: Gemma 3 270M, recipe {recipe}", "",
             f"Total time {seconds / 60:.1f} min. Each parity row links its full report (every prompt, metric "
             "and threshold).", "",
             "| artifact | against | thresholds | worst top-1 | worst KL | worst max abs dlogit | fewest greedy tokens "
             "| result |", "|---|---|---|---|---|---|---|---|"]
    for name, against, r in rows:
        ms = [p.metrics for p in r.prompts if p.metrics.get("finite")]
        worst = (lambda k, f: f"{f(m[k] for m in ms):.4g}" if ms else "NaN")
        stem = "parity" if against == "quantized" else "quantization_loss"
        lines.append(f"| {name} | {against} | `{r.gate}` | {worst('top1', min)} | {worst('kl', max)} | "
                     f"{worst('max_abs_logit', max)} | {min(p.greedy_tokens for p in r.prompts)} | "
                     f"[{'PASS' if r.passed else 'FAIL'}]({name}/{stem}.md) |")
    lines += ["", "| artifact | size | prefill tok/s (512) | TTFT | decode tok/s | peak RSS |", "|---|---|---|---|---|---|"]
    for name, b in benches.items():
        lines.append(f"| {name} | {b['file_mib']:.1f} MiB | {b['prefill_tok_s']:.1f} | {b['ttft_s']:.2f} s | "
                     f"{b['decode_tok_s']:.1f} | {b['peak_rss_mib']:.0f} MiB |")
    return "\n".join(lines) + "\n"


def cmd_quickstart(args: argparse.Namespace) -> int:
    return quickstart(Path(args.out), recipe=args.recipe, runs=args.runs)


def register(sub) -> None:
    p = add_command(sub, "parity", cmd_parity, "check an exported artifact against its reference",
                    "Teacher-forced at every position (max |dlogit|, min cosine, top-1/top-5 agreement, "
                    "KL(ref||artifact), perplexity of each) and free-running greedy (tokens until the first "
                    "divergence; the runtime's own loop must print the same tokens) on three short prompts and "
                    "a passage longer than the sliding window, plus an image+text prompt for a multimodal "
                    "artifact (ExecuTorch's MultimodalRunner, genai's gemma3 pipeline). --against quantized (default) checks export "
                    "fidelity against the model the artifact came from, built as the artifact computes; "
                    "--against float measures what the recipe costs. Thresholds: "
                    "gemma_edge/runtimes/thresholds.json. Exit 1 when any threshold fails, 2 on bad input.")
    p.add_argument("artifact", help="folder written by gemma-edge export (model.pte or model.onnx)")
    p.add_argument("--against", choices=["quantized", "float"], default="quantized")
    p.add_argument("--prompts", help="JSON list of prompt strings (default: built-in prompts)")
    p.add_argument("--source", help="reference checkpoint (default: the path recorded at export)")
    p.add_argument("--report", help="folder for parity.json and parity.md")
    p.add_argument("--image", nargs="+", metavar="FILE",
                   help="multimodal artifacts: check an image+text prompt on these images instead of the "
                        "built-in test card (the vision encoder, the image mask and the text after it)")
    p.add_argument("--image-prompt", metavar="TEXT",
                   help="text of that prompt; each <start_of_image> marks an image (default: describe them)")
    p.add_argument("--pan-and-scan", action="store_true", help="also feed crops of elongated images")

    p = add_command(sub, "quickstart", cmd_quickstart, "the whole pipeline on the bundled 270M",
                    "Convert the bundled Gemma 3 270M, quantize it (int4-block32), export .pte and ONNX, check "
                    "both against their quantized reference and against the float model, benchmark them, and "
                    "write a report folder (OUT/report/README.md). Steps whose output exists are skipped.")
    p.add_argument("--out", default="gemma-edge-quickstart", help="working folder (default: %(default)s)")
    p.add_argument("--recipe", default="int4-block32", help="quantization preset (default: %(default)s)")
    p.add_argument("--runs", type=int, default=3, help="bench runs per artifact (median)")

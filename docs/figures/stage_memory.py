"""Wall time and peak RSS of every stage of the quickstart, each a fresh `gemma-edge` process without the cache.

Run: python docs/figures/stage_memory.py WORK_FOLDER [--recipe int4-block32] [--model bundled]

Each stage runs under `/usr/bin/time -v` (peak RSS = "Maximum resident set size" of that process and its
children), one after the other, in WORK_FOLDER (made fresh; it must not exist). The table is Markdown.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


def stages(work: Path, model: str, recipe: str) -> list[tuple[str, list[str]]]:
    hf, q = work / "hf", work / f"q-{recipe}"
    pte, onnx = work / f"pte-{recipe}", work / f"onnx-{recipe}"
    return [
        ("convert", ["convert", model, "--out", str(hf)]),
        ("quantize", ["quantize", str(hf), "--recipe", recipe, "--out", str(q)]),
        ("export pte", ["export", "pte", str(q), "--out", str(pte)]),
        ("export onnx", ["export", "onnx", str(q), "--out", str(onnx)]),
        ("parity pte", ["parity", str(pte), "--report", str(work / "r-pte")]),
        ("parity onnx", ["parity", str(onnx), "--report", str(work / "r-onnx")]),
        ("parity pte --against float", ["parity", str(pte), "--against", "float", "--report", str(work / "rf-pte")]),
        ("parity onnx --against float", ["parity", str(onnx), "--against", "float", "--report",
                                         str(work / "rf-onnx")]),
        ("bench pte", ["bench", str(pte), "--runs", "1"]),
    ]


def folder_size(path: Path) -> str:
    """The size of what a stage wrote (a folder's files), '' when it wrote nothing there."""
    if not path.exists():
        return ""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return f"{sum(p.stat().st_size for p in files) / 2**20:,.0f} MiB"


def measure(name: str, argv: list[str], output: Path | None = None, log: Path | None = None) -> str:
    """Run `gemma-edge ARGV` under /usr/bin/time -v; a Markdown row: stage, wall time, peak RSS, output size.
    `log`: where the command's own output goes (a bench's figures)."""
    cli = shutil.which("gemma-edge") or sys.exit("gemma-edge is not on PATH")
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", cli, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    status = "" if proc.returncode in (0, 1) else f" (exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1]})"
    gib = int(peak.group(1)) / 2**20 if peak else float("nan")
    size = folder_size(output) if output is not None else ""
    return f"| `gemma-edge {name}` | {seconds:.0f} s | {gib:.2f} GiB{status} | {size} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--recipe", default="int4-block32")
    ap.add_argument("--model", default="bundled")
    args = ap.parse_args()
    if args.work.exists():
        sys.exit(f"{args.work}: exists; name a new folder")
    args.work.mkdir(parents=True)
    print("| stage | wall time | peak RSS | output |")
    print("|---|---|---|---|")
    for name, argv in stages(args.work, args.model, args.recipe):
        if name != "bench pte":
            argv.append("--no-cache")
        out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
        print(measure(name, argv, out), flush=True)


if __name__ == "__main__":
    main()

"""The scale run of issue 21: Gemma 3 1B and 4B (random weights at the released shapes) through every stage.

Run: python docs/figures/scale.py WORK_FOLDER [--preset 1b 4b] [--recipe int4-block32] [--skip STAGE ...] [--resume]

Per preset, in WORK_FOLDER/<preset> (made fresh): `random-checkpoint` (the 4B multimodal, with its SigLIP
tower), `quantize` (the default: data-free calibration statistics), `export onnx`, `export pte`, `parity`
of each against its quantized reference (fidelity), `gguf` (the same weights as llama.cpp's Q4_0, written by
llama.cpp's own quantizer) and `bench` of both artifacts and the GGUF side by side — each a fresh
`gemma-edge` process under `/usr/bin/time -v`, without the build cache, one after the other. Prints one
Markdown table per preset (stage, wall time, peak RSS, output size; each command's own output, the bench's
figures among them, in WORK_FOLDER/<preset>/<stage>.log); docs/scale.md holds them. A stage that
fails is reported with its exit status and last line, and the run goes on with the stages that do not need
its output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from stage_memory import measure  # noqa: E402


def stages(work: Path, preset: str, recipe: str) -> list[tuple[str, list[str], Path | None]]:
    ckpt, q = work / "checkpoint", work / f"q-{recipe}"
    pte, onnx, gguf = work / f"pte-{recipe}", work / f"onnx-{recipe}", work / "checkpoint-q4_0.gguf"
    return [
        ("random-checkpoint", ["random-checkpoint", "--preset", preset, "--out", str(ckpt)], ckpt),
        ("quantize", ["quantize", str(ckpt), "--recipe", recipe, "--out", str(q), "--no-cache"], q),
        ("export onnx", ["export", "onnx", str(q), "--out", str(onnx), "--no-cache"], onnx),
        ("export pte", ["export", "pte", str(q), "--out", str(pte), "--no-cache"], pte),
        ("parity onnx", ["parity", str(onnx), "--report", str(work / "r-onnx"), "--no-cache"], None),
        ("parity pte", ["parity", str(pte), "--report", str(work / "r-pte"), "--no-cache"], None),
        ("gguf", ["gguf", str(ckpt), "--out", str(gguf), "--type", "q4_0"], gguf),
        ("bench", ["bench", str(onnx), str(pte), "--gguf", str(gguf), "--runs", "3"], None),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--preset", nargs="+", default=["1b", "4b"], choices=["270m", "1b", "4b"])
    ap.add_argument("--recipe", default="int4-block32")
    ap.add_argument("--skip", nargs="*", default=[], help="stage names to leave out, e.g. 'export pte'")
    ap.add_argument("--resume", action="store_true",
                    help="go on in an existing WORK_FOLDER: a stage whose output is there is not run again")
    args = ap.parse_args()
    for preset in args.preset:
        work = args.work / preset
        if work.exists() and not args.resume:
            sys.exit(f"{work}: exists; name a new folder (or --resume)")
        work.mkdir(parents=True, exist_ok=True)
        print(f"\n### {preset} ({args.recipe})\n\n| stage | wall time | peak RSS | output |\n|---|---|---|---|", flush=True)
        for name, argv, out in stages(work, preset, args.recipe):
            if name in args.skip:
                continue
            if out is not None and out.exists():
                print(f"| `gemma-edge {name}` | kept from an earlier run | | |", flush=True)
                continue
            written = {argv[i + 1] for i, a in enumerate(argv) if a in ("--out", "--report")}
            missing = [Path(a) for a in argv if a.startswith(str(work)) and a not in written and not Path(a).exists()]
            if missing:
                print(f"| `gemma-edge {name}` | not run: {missing[0].name} is missing | | |", flush=True)
                continue
            print(measure(name, argv, out, log=work / f"{name.replace(' ', '-')}.log"), flush=True)


if __name__ == "__main__":
    main()

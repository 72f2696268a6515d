"""GPTQ's rounding loop, this tree against an earlier commit's, side by side on one weight shape.

Run: python docs/figures/gptq_speed.py ROWS COLS [--baseline COMMIT] [--threads N] [--runs R]
e.g. `python docs/figures/gptq_speed.py 262144 640 --baseline 09b339e` (the 270M's LM head). The baseline's
`calibration/gptq.py` is read with `git show` and imported on its own; both round the same random int4
block-32 weight (scales from `IntGrid.qparams`) with the same Hessian of correlated inputs, alternating,
and the script prints each time and whether the integers are equal.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gemma_edge.calibration import gptq as current
from gemma_edge.calibration.formats import QuantFormat, quantize_with

ROOT = Path(__file__).resolve().parents[2]


def baseline_gptq(commit: str):
    """`commit`'s gptq function, loaded as a sibling module of this tree's so that its relative imports
    (`.formats`, `.recipe`) resolve to this tree's."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:calibration/gptq.py"], check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gptq.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("gemma_edge.calibration.baseline_gptq", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.gptq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", type=int)
    ap.add_argument("cols", type=int)
    ap.add_argument("--baseline", default="09b339e", help="commit whose gptq.py is the baseline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    fmt = QuantFormat.parse("int4_block32")
    w = torch.randn(args.rows, args.cols, generator=g) * 0.02
    init = quantize_with(w, fmt, *fmt.qparams(w))
    x = (torch.randn(4096, 64, generator=g) @ torch.randn(64, args.cols, generator=g)
         + 0.1 * torch.randn(4096, args.cols, generator=g))
    hessian = x.T @ x / len(x)
    old = baseline_gptq(args.baseline)
    for _ in range(args.runs):
        t = time.time()
        a = old(w, hessian, init).qdata
        t_old = time.time() - t
        t = time.time()
        b = current.gptq(w, hessian, init).qdata
        t_new = time.time() - t
        print(f"{args.rows} x {args.cols}: baseline {args.baseline} {t_old:.1f} s, this tree {t_new:.1f} s "
              f"({t_old / t_new:.2f}x), integers equal: {torch.equal(a, b)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""`.pte` export wall time and XNNPACK delegates, this tree against an earlier revision, side by side.

Run: python docs/figures/pte_export_time.py SOURCE [SOURCE ...] [--baseline REV] [--runs 3]
e.g. gemma-edge quantize bundled --recipe int4-block32 --out q-int4   (a QuantizedCheckpoint)
     python docs/figures/pte_export_time.py q-int4 --baseline 4fc11f9

Each export runs in a fresh process (`gemma_edge.export.executorch.export_pte`, --max-seq-len 2048, 2 torch
threads), alternating the baseline's code and this tree's so that host drift hits both alike; the table
gives the median wall time of each and the delegate count (`executorch_call_delegate` calls in the
program's `forward`); the progress lines name each run's model.pte by its sha256 (this tree's runs must
agree). The baseline's code is a `git worktree` of REV, put on PYTHONPATH ahead of this tree.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tree import baseline_path, remove_baseline  # noqa: E402

EXPORT = """
import sys, time, torch
torch.set_num_threads(2)
from pathlib import Path
from gemma_edge.export.executorch import export_pte
start = time.perf_counter()
export_pte(Path(sys.argv[1]), Path(sys.argv[2]), max_seq_len=2048)
print(time.perf_counter() - start)
"""

COUNT = """
import sys
from executorch.exir._serialize._program import deserialize_pte_binary
program = deserialize_pte_binary(open(sys.argv[1], "rb").read()).program
plan = next(p for p in program.execution_plan if p.name == "forward")
print(sum(1 for c in plan.chains for i in c.instructions if type(i.instr_args).__name__ == "DelegateCall"))
"""


def run(code: str, args: list[str], pythonpath: Path | None) -> str:
    env = None
    if pythonpath is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", type=Path)
    ap.add_argument("--baseline", default="4fc11f9", help="git revision to compare with")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        old = baseline_path(args.baseline, tmp)
        try:
            print(f"| source | code | export wall time, median of {args.runs} (runs) | XNNPACK delegates |")
            print("|---|---|---|---|")
            for source in args.sources:
                times: dict[str, list[float]] = {"baseline": [], "this tree": []}
                delegates = {}
                for i in range(args.runs):
                    for label, path in (("baseline", old), ("this tree", None)):
                        out = tmp / f"{label.replace(' ', '-')}-{source.name}-{i}"
                        times[label].append(float(run(EXPORT, [str(source.resolve()), str(out)], path)))
                        delegates[label] = run(COUNT, [str(out / "model.pte")], None)
                        digest = hashlib.sha256((out / "model.pte").read_bytes()).hexdigest()[:16]
                        print(f"  {time.strftime('%H:%M:%S')} {label} run {i + 1}: {times[label][-1]:.1f} s, "
                              f"model.pte sha256 {digest}", file=sys.stderr, flush=True)
                for label in times:
                    runs = ", ".join(f"{t:.0f}" for t in times[label])
                    print(f"| {source.name} | {label} | {statistics.median(times[label]):.0f} s ({runs}) | "
                          f"{delegates[label]} |", flush=True)
        finally:
            remove_baseline(tmp)


if __name__ == "__main__":
    main()

"""Where one decode step of an ONNX folder goes, by operator: onnxruntime's own profiler.

Run: python docs/figures/onnx_decode_profile.py FOLDER [STEPS]
Our ONNX loop (`OnnxRunner`, 2 threads) prefills 512 tokens, then decodes STEPS (default 20) with
`SessionOptions.enable_profiling`; prints the mean step time and each operator's summed kernel time per step.
(Profiling adds its own overhead: compare operators within one run, not with `gemma-edge bench`.)
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

import onnxruntime as ort

from gemma_edge.runtimes.onnx_runner import OnnxRunner


def main(folder: Path, steps: int = 20) -> None:
    runner = OnnxRunner(folder, threads=2)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = 2, True
    options.profile_file_prefix = "/tmp/onnx_decode_profile"
    runner.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    runner.prefill(list(range(1000, 1512)))
    for t in range(steps):
        runner.decode(1000 + t)
    path = runner.session.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    decode_runs = [e for e in events if e.get("name") == "model_run"][-steps:]
    start = decode_runs[0]["ts"]
    time_by, count_by = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            time_by[e["args"]["op_name"]] += e["dur"]
            count_by[e["args"]["op_name"]] += 1
    print(f"decode step {sum(r['dur'] for r in decode_runs) / steps / 1000:.2f} ms")
    for op, us in time_by.most_common(12):
        print(f"  {op:28s} {us / steps / 1000:6.2f} ms  {count_by[op] // steps} nodes")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20)

"""One MatMulNBits call at the 270M's LM-head shape: milliseconds per bits and accuracy_level (ONNX Runtime CPU).

Run: python docs/figures/matmulnbits_levels.py [--n 262144] [--k 640] [--block 32] [--threads 2] [--calls 5]
Random packed weights and scales; one token of float input; the median-free mean of CALLS calls after one
warm-up call, each configuration its own session.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort


def session(n: int, k: int, block: int, bits: int, level: int, threads: int, folder: Path):
    rng = np.random.default_rng(0)
    tape = ir.tape.Tape()
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, k]))
    packed = rng.integers(0, 256, size=(n, k // block, block * bits // 8)).astype(np.uint8)
    w = tape.initializer(ir.tensor(packed, name="w"), name="w")
    s = tape.initializer(ir.tensor((rng.random(n * k // block) * 0.01).astype(np.float32), name="s"), name="s")
    y = tape.op("MatMulNBits", [x, w, s], {"K": k, "N": n, "bits": bits, "block_size": block,
                                           "accuracy_level": level}, domain="com.microsoft")
    y.name = "y"
    graph = ir.Graph([x], [y], nodes=tape.nodes, initializers=tape.initializers,
                     opset_imports={"": 23, "com.microsoft": 1})
    path = folder / f"mnb_{bits}_{level}.onnx"
    ir.save(ir.Model(graph, ir_version=11), path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=262144)
    ap.add_argument("--k", type=int, default=640)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args()
    x = np.random.default_rng(1).standard_normal((1, args.k)).astype(np.float32)
    print("| bits | accuracy_level | ms per call |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for bits, level in [(4, 0), (4, 4), (8, 0), (8, 1), (8, 2), (8, 3), (8, 4)]:
            s = session(args.n, args.k, args.block, bits, level, args.threads, Path(tmp))
            s.run(None, {"x": x})
            start = time.perf_counter()
            for _ in range(args.calls):
                s.run(None, {"x": x})
            print(f"| {bits} | {level} | {(time.perf_counter() - start) / args.calls * 1000:.1f} |", flush=True)


if __name__ == "__main__":
    main()

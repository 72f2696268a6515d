"""gemma_edge.runtimes: runners for exported artifacts (`executorch_runner.py`) and `bench.py`. The
parity harness and the ONNX runners (issues 5 and 6) are not built yet."""

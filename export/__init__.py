"""gemma_edge.export: the ExecuTorch exporter (`executorch.py`, `xnnpack_quant.py`) and manifests.
The ONNX exporter (issue 5) is not built yet."""

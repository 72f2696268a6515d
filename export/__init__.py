"""gemma_edge.export: ExecuTorch and ONNX exporters and manifests (issues 4 and 5; not built yet)."""

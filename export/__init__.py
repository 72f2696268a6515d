"""gemma_edge.export: the ExecuTorch exporter (`executorch.py`, its integer modules and format table in
`xnnpack_quant.py`), the ONNX exporter (`onnx.py`, `onnx_vision.py`, its format tables in `onnx_quant.py`),
the lowering-table mechanism (`lowering.py`) and manifests (`manifest.py`)."""

"""gemma_edge.calibration: quant formats, recipes, calibration data and observers, PTQ, the
QuantizedCheckpoint and evaluation. QAT (issue 7) is not built yet."""

"""gemma_edge.calibration: quant formats as types, recipes, calibration data and observers, PTQ, QAT,
grid import, the QuantizedCheckpoint (and how `gemma_edge.model.load` opens one) and evaluation."""

"""gemma_edge.calibration: calibration data, observers, quant formats, PTQ, QAT (issues 3 and 7; not built yet)."""

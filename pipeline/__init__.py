"""gemma_edge.pipeline: the one build path through every stage (`build.py`) and its content-addressed cache
(`cache.py`)."""

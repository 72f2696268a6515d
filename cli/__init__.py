"""gemma_edge.cli: the `gemma-edge` command."""

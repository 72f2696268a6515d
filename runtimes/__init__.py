"""gemma_edge.runtimes: runners behind one interface, parity harness, benchmarks (issue 6; not built yet)."""

"""`python -m gemma_edge.runtimes.probe FOLDER`: load an artifact and run one token (see `runtimes.probe`)."""

import sys

from gemma_edge.model.errors import GemmaEdgeError

from . import open_runner

if __name__ == "__main__":
    try:
        runner = open_runner(sys.argv[1], threads=1, verify=False)
        runner.reset()
        logits = runner.prefill([2])
        if logits.numel() != runner.vocab_size:
            raise GemmaEdgeError(f"one token gave {logits.numel()} logits, not the vocabulary's {runner.vocab_size}")
    except GemmaEdgeError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # the runtime's own error types: reported, as the caller's check fails on them
        print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
        sys.exit(1)

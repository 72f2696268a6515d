"""llama.cpp (through llama-cpp-python, when installed) behind the `Runner` protocol, so `gemma-edge bench`
can measure a GGUF with exactly the protocol it uses for our artifacts, side by side."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gemma_edge.model.errors import GemmaEdgeError


class LlamaCppRunner:
    """prefill/decode over a GGUF file; logits of the last evaluated position."""

    def __init__(self, gguf: str | Path, threads: int | None = None, n_ctx: int = 2048):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise GemmaEdgeError(f"{gguf}: benchmarking a GGUF needs llama-cpp-python; "
                                 "pip install llama-cpp-python") from None
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads or os.cpu_count(),
                         verbose=False)
        self.vocab_size = int(self.llm.n_vocab())

    def reset(self) -> None:
        self.llm.reset()

    def _eval(self, tokens: Sequence[int]) -> torch.Tensor:
        self.llm.eval(list(tokens))
        # Without logits_all, llama-cpp-python 0.3 no longer copies logits into `scores`; the context holds
        # the last position's row.
        row = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab_size,))
        return torch.from_numpy(row.astype(np.float32, copy=True))

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor:
        return self._eval(tokens)

    def decode(self, token: int) -> torch.Tensor:
        return self._eval([token])

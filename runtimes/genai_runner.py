"""onnxruntime-genai's own generation loop over an exported ONNX folder (what an app using genai runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gemma_edge.model import GemmaEdgeError


class GenAIRunner:
    """`og.Model` + `og.Generator`, greedy; token ids in and out, stopping at the config's eos ids."""

    def __init__(self, folder: str | Path):
        import onnxruntime_genai as og

        self.og = og
        try:
            self.model = og.Model(str(folder))
        except Exception as e:  # genai raises its own error types
            raise GemmaEdgeError(f"{folder}: onnxruntime-genai could not load the folder ({e})") from None

    def generate(self, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + max_new_tokens)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(list(prompt))
        out: list[int] = []
        while not generator.is_done() and len(out) < max_new_tokens:
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        return out

"""onnxruntime-genai's own generation loop over an exported ONNX folder (what an app using genai runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gemma_edge.model import GemmaEdgeError


def genai_max_length(folder: str | Path, needed: int) -> int:
    """The `max_length` to give genai for `needed` positions: at least the capacity of any window-sized
    cache (`--windowed-kv`), which GroupQueryAttention needs whole (generation is then capped by count)."""
    from .onnx_runner import window_caches

    return max([needed, *window_caches(Path(folder)).values()])


class GenAIRunner:
    """`og.Model` + `og.Generator`, greedy; token ids in and out, stopping at the config's eos ids."""

    def __init__(self, folder: str | Path):
        import onnxruntime_genai as og

        self.og, self.folder = og, Path(folder)
        try:
            self.model = og.Model(str(folder))
        except Exception as e:  # genai raises its own error types
            raise GemmaEdgeError(f"{folder}: onnxruntime-genai could not load the folder ({e})") from None

    def generate(self, prompt: Sequence[int], max_new_tokens: int, pixels=None, image_tokens: int = 0) -> list[int]:
        """Greedy tokens after `prompt`. With `pixels` ([N, 3, S, S], preprocessed; the prompt already expanded
        with `image_tokens` soft tokens in all) the inputs go in as genai's multimodal processor would hand
        them over, so Pan & Scan crops and any tokens-per-image work."""
        import numpy as np

        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False,
                                  max_length=genai_max_length(self.folder, len(prompt) + max_new_tokens))
        generator = self.og.Generator(self.model, params)
        if pixels is None:
            generator.append_tokens(list(prompt))
        else:
            inputs = self.og.NamedTensors()
            inputs["input_ids"] = np.asarray([list(prompt)], dtype=np.int32)
            inputs["pixel_values"] = np.ascontiguousarray(pixels.numpy(), dtype=np.float32)
            inputs["num_image_tokens"] = np.asarray(image_tokens, dtype=np.int64)
            generator.set_inputs(inputs)
        out: list[int] = []
        while not generator.is_done() and len(out) < max_new_tokens:
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        return out

"""ONNX Runtime behind the `Runner` protocol: one InferenceSession, the KV cache carried between calls."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gemma_edge.model import GemmaEdgeError
from gemma_edge.model.generate import check_token_ids


class OnnxRunner:
    """prefill/decode over `model.onnx`; each call feeds the past caches and keeps the presents."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(folder) / "model.onnx"
        if not path.exists():
            raise GemmaEdgeError(f"{path}: no model.onnx; export one with gemma-edge export onnx")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.kv_shape = {i.name: i.shape for i in self.session.get_inputs()}
        # present.{i}.key of one call is past_key_values.{i}.key of the next
        self.carry = [o.name.replace("present.", "past_key_values.") for o in self.session.get_outputs()[1:]]
        self.vocab_size = int(self.session.get_outputs()[0].shape[-1])
        self.reset()

    def reset(self) -> None:
        self.past = {n: np.zeros((1, self.kv_shape[n][1], 0, self.kv_shape[n][3]), np.float32)
                     for n in self.past_names}
        self.pos = 0

    def _run(self, tokens: Sequence[int]) -> torch.Tensor:
        check_token_ids(tokens, self.vocab_size)
        ids = np.asarray([list(tokens)], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones((1, self.pos + ids.shape[1]), np.int64), **self.past}
        logits, *presents = self.session.run(None, feed)
        self.past = dict(zip(self.carry, presents))
        self.pos += ids.shape[1]
        return torch.from_numpy(logits[0, -1].copy())

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor:
        return self._run(tokens)

    def decode(self, token: int) -> torch.Tensor:
        return self._run([token])

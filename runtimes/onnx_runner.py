"""ONNX Runtime behind the `Runner` protocol: one InferenceSession, the KV cache carried between calls; and
the multimodal folder's three sessions (vision, embedding, decoder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gemma_edge.model import GemmaEdgeError
from gemma_edge.model.generate import check_token_ids

from . import artifact_vision


def session(path: Path, threads: int | None):
    """An ONNX Runtime CPU session, or a one-line error naming the file that would not load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GemmaEdgeError(f"{path}: ONNX Runtime cannot load it ({first}); export it again") from None


def shrinking_arena():
    """RunOptions that hand the CPU arena's unused chunks back to the system when the call ends: for the
    few calls on many positions (a prompt, an image), whose buffers would otherwise stay in the arena for
    the session's life (a 1,088-token passage left a 4B parity run 3 GB above its level before). Decode
    steps keep the arena as it is, for speed."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def window_caches(folder: Path) -> dict[int, int]:
    """{layer: KV capacity} of the layers whose cache is window-sized, from genai_config.json's
    `sliding_window` (what onnxruntime-genai reads too); empty for a folder without."""
    try:
        window = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"].get("sliding_window")
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return {}
    if not window:
        return {}
    return {int(i): int(window["window_size"]) + int(window.get("cache_slack", 0)) for i in window.get("layers", [])}


def _max_seq_len(folder: Path) -> int | None:
    from gemma_edge.export.manifest import read_manifest

    if not (folder / "manifest.json").exists():
        return None
    value = read_manifest(folder).get("metadata", {}).get("max_seq_len")
    return int(value) if isinstance(value, int) else None


class OnnxRunner:
    """prefill/decode over `model.onnx`; each call feeds the past caches and keeps the presents."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        path = Path(folder) / "model.onnx"
        if not path.exists():
            raise GemmaEdgeError(f"{path}: no model.onnx; export one with gemma-edge export onnx")
        self.session = session(path, threads)
        self.max_seq_len = _max_seq_len(Path(folder))
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.kv_shape = {i.name: i.shape for i in self.session.get_inputs()}
        # present.{i}.key of one call is past_key_values.{i}.key of the next
        self.carry = [o.name.replace("present.", "past_key_values.") for o in self.session.get_outputs()[1:]]
        self.vocab_size = int(self.session.get_outputs()[0].shape[-1])
        windows = window_caches(Path(folder))
        # a window-sized cache is its full capacity from the start (rows past what the op keeps are unused)
        self.capacity = {n: windows.get(int(n.split(".")[1]), 0) for n in self.past_names}
        self.reset()

    def reset(self) -> None:
        self.past = {n: np.zeros((1, self.kv_shape[n][1], self.capacity[n], self.kv_shape[n][3]), np.float32)
                     for n in self.past_names}
        self.pos = 0

    def run_inputs(self, first: dict[str, np.ndarray], length: int) -> torch.Tensor:
        """One decoder call on `length` new positions (`input_ids` or `inputs_embeds` in `first`), caches
        carried; logits [1, vocab] of the last position (a text decoder's), or [length, vocab] (a multimodal
        one's), sharing ONNX Runtime's output: copy the rows you keep."""
        if self.max_seq_len is not None and self.pos + length > self.max_seq_len:
            raise GemmaEdgeError(f"{self.pos + length} tokens exceed the ONNX export's max_seq_len {self.max_seq_len}")
        feed = {**first, "attention_mask": np.ones((1, self.pos + length), np.int64), **self.past}
        logits, *presents = self.session.run(None, feed, shrinking_arena() if length > 1 else None)
        self.past = dict(zip(self.carry, presents))
        self.pos += length
        return torch.from_numpy(logits[0])

    def _run(self, tokens: Sequence[int]) -> torch.Tensor:
        check_token_ids(tokens, self.vocab_size)
        return self.run_inputs({"input_ids": np.asarray([list(tokens)], dtype=np.int64)}, len(tokens))[-1].clone()

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor:
        return self._run(tokens)

    def decode(self, token: int) -> torch.Tensor:
        return self._run([token])


class OnnxMultimodalRunner:
    """`Runner` over a multimodal ONNX folder (vision.onnx, embedding.onnx, model.onnx fed embeddings),
    called as onnxruntime-genai's `gemma3` pipeline calls it: the whole prompt, images included, in one
    decoder call, then one token per call. `images` (preprocessed pixels [N, 3, S, S]) fill the image soft
    tokens of a session's first prefill, in order."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        folder = Path(folder)
        meta = artifact_vision(folder)
        missing = [n for n in ("vision.onnx", "embedding.onnx", "model.onnx") if not (folder / n).exists()]
        if missing or meta is None:
            raise GemmaEdgeError(f"{folder}: not a multimodal ONNX folder (no {', '.join(missing) or 'vision'} in its "
                                 "manifest); export a multimodal checkpoint with gemma-edge export onnx")
        self.vision, self.embedding = (session(folder / n, threads) for n in ("vision.onnx", "embedding.onnx"))
        self.decoder = OnnxRunner(folder, threads)
        self.width = int(self.embedding.get_outputs()[0].shape[-1])  # hidden + 1 (image flag channel)
        self.image_token_id, self.tokens_per_image = meta["image_token_id"], meta["tokens_per_image"]
        self.images: torch.Tensor | None = None

    @property
    def pos(self) -> int:
        return self.decoder.pos

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    def reset(self) -> None:
        self.decoder.reset()

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """pixels [N, 3, S, S] -> [N * tokens per image, hidden + 1] (the last channel flags image tokens)."""
        return self.vision.run(None, {"pixel_values": pixels.numpy().astype(np.float32)}, shrinking_arena())[0]

    def prompt_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """One call on the next positions; logits [T, vocab]. The session's first call takes the images."""
        check_token_ids(tokens, self.decoder.vocab_size)
        soft = sum(t == self.image_token_id for t in tokens)
        images = self.images if self.pos == 0 and self.images is not None else None
        given = 0 if images is None else len(images) * self.tokens_per_image
        if soft != given:
            raise GemmaEdgeError(f"the prompt has {soft} image soft tokens but the images give {given}; set "
                                 "runner.images to the preprocessed pixels and expand the prompt with image_processing")
        features = np.zeros((0, self.width), np.float32) if images is None else self.encode_images(images)
        feed = {"input_ids": np.asarray([list(tokens)], dtype=np.int64), "image_features": features}
        embeds = self.embedding.run(None, feed, shrinking_arena() if len(tokens) > 1 else None)[0]
        return self.decoder.run_inputs({"inputs_embeds": embeds}, embeds.shape[1])

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor:
        return self.prompt_logits(tokens)[-1].clone()

    def decode(self, token: int) -> torch.Tensor:
        return self.prompt_logits([token])[-1].clone()

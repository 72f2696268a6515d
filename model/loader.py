"""`load(path)`: an HF folder, a llama.cpp GGUF file or a gemma-edge folder -> config, model, tokenizer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Iterator

import torch

from .atomic import atomic_dir, check_output_path
from .config import GemmaConfig
from .errors import GemmaEdgeError
from .gemma import Gemma
from .gguf_file import read_gguf, read_gguf_config, read_gguf_tokenizer
from .hf_checkpoint import check_state, iter_state_dict, load_weights, read_state_dict, write_hf_folder
from .tokenizer import Tokenizer
from .vision import VisionConfig, VisionEncoder

DEFAULT_MAX_SEQ_LEN = 4096


@dataclass
class LoadedModel:
    config: GemmaConfig
    model: Gemma
    tokenizer: Tokenizer | None
    source: Path


@dataclass(frozen=True)
class FolderKind:
    """A folder a later stage writes (a quantized checkpoint) that `load` opens through that stage. Each is
    declared in pyproject.toml under `[project.entry-points."gemma_edge.folders"]`, so model/ imports no stage:
    `recognises(path)`; `load(path, max_seq_len, dtype)` -> LoadedModel; `has_vision(path)`;
    `load_vision(path, dtype, activations)` -> VisionEncoder."""

    name: str
    recognises: Callable[[Path], bool]
    load: Callable[..., "LoadedModel"]
    has_vision: Callable[[Path], bool]
    load_vision: Callable[..., VisionEncoder]


@cache
def _folder_kinds() -> tuple[FolderKind, ...]:
    return tuple(ep.load() for ep in sorted(entry_points(group="gemma_edge.folders"), key=lambda ep: ep.name))


def folder_kind(path: Path) -> FolderKind | None:
    """The stage's folder kind `path` is, None for a checkpoint folder or file."""
    return next((k for k in _folder_kinds() if path.is_dir() and k.recognises(path)), None)


def _is_gguf(path: Path) -> bool:
    """True for a GGUF file, False for a folder; anything else is an error naming the path."""
    if not path.exists():
        raise GemmaEdgeError(f"{path}: no such file or folder; pass an HF checkpoint folder, a .gguf file "
                             "or a folder written by gemma-edge")
    if path.is_dir():
        return False
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GemmaEdgeError(f"{path}: not a GGUF file (magic {magic!r}); pass a .gguf file or a checkpoint folder")
    return True


def read_config(path: str | Path) -> GemmaConfig:
    """The config of a checkpoint without reading its weights."""
    path = Path(path)
    return read_gguf_config(path) if _is_gguf(path) else GemmaConfig.from_json_file(path / "config.json")


def read_checkpoint(path: str | Path, progress: bool = True, dtype: torch.dtype = torch.float32,
                    ) -> tuple[GemmaConfig, dict[str, torch.Tensor], bytes | None]:
    """Config, state dict (our names, in `dtype`) and tokenizer.model bytes (None if the folder has none)."""
    path = Path(path)
    if _is_gguf(path):
        config, state, tok = read_gguf(path, progress=progress)
        return config, {k: v.to(dtype) for k, v in state.items()}, tok
    kind = folder_kind(path)
    if kind is not None:
        raise GemmaEdgeError(f"{path}: is a {kind.name}; open it with gemma_edge.model.load "
                             "(it has no float weights to read or convert)")
    config = GemmaConfig.from_json_file(path / "config.json")
    return config, read_state_dict(path, dtype), _folder_tokenizer(path)


def _folder_tokenizer(path: Path) -> bytes | None:
    """tokenizer.model's bytes of a checkpoint folder, None if it has none."""
    tok = path / "tokenizer.model"
    if tok.exists() and not tok.is_file():
        raise GemmaEdgeError(f"{tok}: is a folder, not a file; copy the checkpoint's tokenizer.model here")
    return tok.read_bytes() if tok.exists() else None


def iter_weights(path: str | Path, dtype: torch.dtype | None = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
    """The float decoder tensors of a checkpoint (our names) in `dtype` (None: as stored; a GGUF's are
    float32), one at a time: from an HF folder shard by shard as stored, so a caller that keeps none of them
    needs memory for one (a GGUF is read whole)."""
    path = Path(path)
    if _is_gguf(path) or folder_kind(path) is not None:  # read whole; a stage's folder is refused there
        yield from read_checkpoint(path, progress=False, dtype=dtype or torch.float32)[1].items()
    else:
        yield from iter_state_dict(path, dtype)


def load_skeleton(path: str | Path) -> LoadedModel:
    """A checkpoint's config, tokenizer and source, its model built on the meta device (no weights read):
    for a stage that streams the weights (`iter_weights`) and needs the model's shapes at most."""
    path = Path(path)
    kind = folder_kind(path)
    if kind is not None:
        raise GemmaEdgeError(f"{path}: is a {kind.name}; it has no float weights to read (pass the float "
                             "checkpoint it came from)")
    config = read_config(path)
    tok_bytes = read_gguf_tokenizer(path) if _is_gguf(path) else _folder_tokenizer(path)
    with torch.device("meta"):
        model = Gemma(config, max_seq_len=1)
    return LoadedModel(config, model, _tokenizer(tok_bytes, path, config), path)


def _tokenizer(tok_bytes: bytes | None, path: Path, config: GemmaConfig) -> Tokenizer | None:
    tokenizer = Tokenizer(tok_bytes, str(path / "tokenizer.model"), config.bos_token_id) if tok_bytes is not None else None
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise GemmaEdgeError(f"{path}: tokenizer.model has {tokenizer.vocab_size} pieces but the model's "
                             f"vocabulary is {config.vocab_size}; use the tokenizer that came with the weights")
    return tokenizer


def load(path: str | Path, max_seq_len: int | None = None, dtype: torch.dtype = torch.float32,
         progress: bool = True) -> LoadedModel:
    """Build the reference model from a checkpoint; KV caches are sized for `max_seq_len` tokens
    (default: min(4096, the model's maximum context))."""
    path = Path(path)
    kind = folder_kind(path)
    if kind is not None:  # e.g. a quantized checkpoint: the quantized reference
        return kind.load(path, max_seq_len=max_seq_len, dtype=dtype)
    config, state, tok_bytes = read_checkpoint(path, progress=progress, dtype=dtype)
    seq = max_seq_len or min(DEFAULT_MAX_SEQ_LEN, config.max_position_embeddings)
    if seq > config.max_position_embeddings:
        raise GemmaEdgeError(f"max_seq_len={seq} exceeds the model's context of {config.max_position_embeddings}")
    model = load_weights(lambda: Gemma(config, max_seq_len=seq, dtype=dtype), state, path).eval()
    del state
    return LoadedModel(config, model, _tokenizer(tok_bytes, path, config), path)


def has_vision(path: str | Path) -> bool:
    """True for an HF folder whose config.json describes a vision tower (Gemma 3 4B+), or a quantized
    checkpoint made from one."""
    path = Path(path)
    kind = folder_kind(path)
    if kind is not None:
        return kind.has_vision(path)
    try:
        return path.is_dir() and "vision_config" in json.loads((path / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def load_vision(path: str | Path, dtype: torch.dtype = torch.float32, activations: str | None = None) -> VisionEncoder:
    """The vision tower and projector of a multimodal (Gemma 3 4B+) HF checkpoint folder, or the quantized
    one of a QuantizedCheckpoint (`activations` as in its `build_vision`)."""
    path = Path(path)
    kind = folder_kind(path)
    if kind is not None:
        return kind.load_vision(path, dtype, activations)
    if _is_gguf(path):
        raise GemmaEdgeError(f"{path}: a GGUF file holds no vision tower here; pass the HF checkpoint folder")
    try:
        d = json.loads((path / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise GemmaEdgeError(f"{path / 'config.json'}: unreadable ({e}); an HF checkpoint folder needs one") from None
    config = VisionConfig.from_hf_dict(d)
    if config is None:
        raise GemmaEdgeError(f"{path}: config.json has no vision_config; this is a text-only checkpoint "
                             "(Gemma 3 takes images from 4B up)")
    return load_weights(lambda: VisionEncoder(config).to(dtype), read_state_dict(path, dtype, vision=True), path).eval()


def convert(src: str | Path, out: str | Path, dtype: torch.dtype = torch.float32, overwrite: bool = False,
            progress: bool = True) -> Path:
    """Write `src` (GGUF or folder) as an HF folder that transformers' Gemma3ForCausalLM loads."""
    check_output_path(out, [src], overwrite)
    config, state, tok_bytes = read_checkpoint(src, progress=progress)
    with torch.device("meta"):
        check_state(Gemma(config, max_seq_len=1), state, Path(src))  # fail before writing anything
    with atomic_dir(out, overwrite=overwrite, inputs=[src]) as tmp:
        write_hf_folder(tmp, config, state, tok_bytes, dtype=dtype)
    return Path(out)

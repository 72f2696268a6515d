"""Hugging Face checkpoint folders: read and write `config.json` + safetensors in `Gemma3ForCausalLM` layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .config import GemmaConfig
from .errors import GemmaEdgeError

# Decoder weights sit under one of these prefixes: text-only checkpoints, multimodal ones
# (transformers 5.x and 4.x layouts). The vision tower and projector are not part of the text decoder.
_DECODER_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
_LM_HEAD_NAMES = ("lm_head.weight", "language_model.lm_head.weight")


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise GemmaEdgeError(f"{index}: unreadable shard index ({e!r}); restore it from the checkpoint") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise GemmaEdgeError(f"{index} names shards that are missing: {', '.join(missing)}")
        return files
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    raise GemmaEdgeError(f"{folder}: no model.safetensors or model.safetensors.index.json; "
                         "is this a Hugging Face checkpoint folder?")


def _decoder_name(name: str) -> str | None:
    if name in _LM_HEAD_NAMES:
        return "lm_head.weight"
    for prefix in _DECODER_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix):]
            return None if rest.startswith(("vision_tower.", "multi_modal_projector.")) else rest
    return None


# The vision tower and projector of a multimodal checkpoint: Google's releases (`vision_tower.vision_model.`),
# transformers 5.x in memory (`model.vision_tower.`) and as it saves (`vision_tower.`). SigLIP's pooling
# head, present when vision_use_head is set, is not used by Gemma 3. Longest prefixes first.
_VISION_PREFIXES = {"model.vision_tower.vision_model.": "vision_tower.", "vision_tower.vision_model.": "vision_tower.",
                    "model.vision_tower.": "vision_tower.", "vision_tower.": "vision_tower.",
                    "model.multi_modal_projector.": "multi_modal_projector.",
                    "multi_modal_projector.": "multi_modal_projector."}


def _vision_name(name: str) -> str | None:
    for prefix, ours in _VISION_PREFIXES.items():
        if name.startswith(prefix):
            rest = name[len(prefix):]
            return None if rest.startswith("head.") else ours + rest
    return None


def read_state_dict(folder: Path, dtype: torch.dtype = torch.float32, vision: bool = False) -> dict[str, torch.Tensor]:
    """Decoder tensors of an HF folder, renamed to `gemma.Gemma`'s names and cast to `dtype`; with
    `vision`, the vision tower's and projector's instead, under `vision.VisionEncoder`'s names."""
    return dict(iter_state_dict(folder, dtype, vision))


def iter_state_dict(folder: Path, dtype: torch.dtype = torch.float32, vision: bool = False):
    """`read_state_dict`'s (name, tensor) pairs one at a time, shard by shard, in file order: a stage that
    needs each weight once (quantize) holds one at a time instead of the model."""
    rename = _vision_name if vision else _decoder_name
    for path in _safetensors_files(folder):
        try:
            for name, tensor in read_safetensors(path, lambda n: rename(n) is not None, dtype):
                yield rename(name), tensor
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, OSError) as e:
            what = "is a folder, not a safetensors file" if path.is_dir() else f"truncated or corrupt safetensors file ({e})"
            raise GemmaEdgeError(f"{path}: {what}; download or convert the checkpoint again") from None


_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                       "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32,
                       "I64": torch.int64, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                       "F8_E5M2": torch.float8_e5m2}


def read_safetensors(path: Path, wanted: Callable[[str], bool], dtype: torch.dtype | None = None):
    """(name, tensor) of the `wanted` tensors of one safetensors file, in file order, cast to `dtype` (None:
    as stored). Each is read through one scratch buffer into memory of its own, the only copy: safetensors'
    memory map, or a fresh buffer per tensor (a bf16 one freed after each cast, leaving holes the float32
    tensors do not fit), added up to 2 GB to the peak of loading the 1B (measured)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if not 2 <= header_len <= size - 8:
            raise ValueError(f"header length {header_len} does not fit a {size}-byte file")
        header = json.loads(f.read(header_len))
        base = 8 + header_len
        entries = sorted((v["data_offsets"][0], k, v) for k, v in header.items() if k != "__metadata__" and wanted(k))
        scratch = torch.empty(max((v["data_offsets"][1] - v["data_offsets"][0] for _, _, v in entries), default=0),
                              dtype=torch.uint8)
        for _, name, info in entries:
            start, end = info["data_offsets"]
            if not 0 <= start <= end <= size - base:
                raise ValueError(f"{name} lies past the end of the file")
            raw = scratch[:end - start]
            f.seek(base + start)
            if f.readinto(raw.numpy()) != end - start:
                raise ValueError(f"{name}: short read")
            stored = raw.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
            yield name, stored.to(dtype or stored.dtype, copy=True)


def load_weights(make: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], source: Path) -> torch.nn.Module:
    """`make()`'s module holding `state`'s tensors themselves as its weights (give them in the dtype wanted).
    Built on the meta device and given the tensors without a copy: building it on the CPU and copying in
    would initialise every weight at random and hold two copies of the model at once. Buffers (RoPE
    tables, caches) come from the module's `init_buffers`, if it has any."""
    with torch.device("meta"):
        module = make()
    check_state(module, state, source)
    return materialize(module, _untied(module, state))


def materialize(module: torch.nn.Module, state: dict[str, torch.Tensor],
                placeholders: set[str] = frozenset()) -> torch.nn.Module:
    """Give a module built (partly) on the meta device `state`'s tensors, without a copy, and memory for
    its buffers, filled by its `init_buffers` if it has one. Tensors already real (an integer module swapped
    in) stay; a parameter still without one is an error unless named in `placeholders` (filled later)."""
    module.load_state_dict(state, strict=False, assign=True)
    for sub in module.modules():
        for name, buffer in sub._buffers.items():
            if buffer is not None and buffer.is_meta:
                sub._buffers[name] = torch.empty_like(buffer, device="cpu")
    left = [name for name, p in module.named_parameters() if p.is_meta and name not in placeholders]
    if left:
        raise GemmaEdgeError(f"no tensor for {left[0]} (and {len(left) - 1} more)")
    if hasattr(module, "init_buffers"):
        module.init_buffers()
    return module


def _untied(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without an LM head a tied model has no place for (it is the embedding table)."""
    if getattr(getattr(model, "config", None), "tie_word_embeddings", True):
        return {k: v for k, v in state.items() if k != "lm_head.weight"}
    return state


def all_finite(t: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """torch.isfinite(t).all() a chunk at a time: on the whole table it allocates 1.5 GB at the 1B (measured)."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Name the first missing, unexpected, mis-shaped or non-finite tensor of `state` for `model`."""
    expected = model.state_dict()
    state = _untied(model, state)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shape_errors = [f"{k} is {list(state[k].shape)} but config.json implies {list(expected[k].shape)}"
                    for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if shape_errors:
        raise GemmaEdgeError(f"{source}: config and weights disagree: {shape_errors[0]}"
                             + (f" (and {len(shape_errors) - 1} more)" if len(shape_errors) > 1 else "")
                             + "; use the config.json that came with these weights")
    if missing:
        raise GemmaEdgeError(f"{source}: {len(missing)} tensors missing, e.g. {missing[0]}; "
                             "the checkpoint is incomplete or not a Gemma 3 text decoder")
    if unexpected:
        raise GemmaEdgeError(f"{source}: unexpected tensors, e.g. {unexpected[0]}; "
                             "the checkpoint does not match its config.json")
    for name, tensor in state.items():
        if not all_finite(tensor):
            raise GemmaEdgeError(f"{source}: tensor {name} contains NaN or Inf; the checkpoint is corrupt")


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, its I/O failures (a full disk) raised as the OSError they are."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        raise OSError(f"writing {path.name} failed ({e})") from None


# safetensors (0.8) lays tensors out by dtype, in this order (its enum's, widest first), then by name
_SAFETENSORS_LAYOUT = ("U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "F8_E8M0", "F8_E4M3",
                       "F8_E5M2", "I8", "U8", "BOOL")
_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}


def save_safetensors_streamed(make: dict[str, Callable[[str], torch.Tensor]], path: Path,
                              metadata: dict[str, str] | None = None) -> None:
    """The bytes `save_safetensors` writes, with each tensor made when its turn comes and dropped after:
    `make[name](device)` builds it on `device` ("meta" for the header's dtype and shape, "cpu" for the
    data). save_file wants every tensor at once and copies them all to bytes first: at 4B, 6 GB on top of
    the checkpoint being saved."""
    specs = {name: f("meta") for name, f in make.items()}
    order = sorted(specs, key=lambda n: (_SAFETENSORS_LAYOUT.index(_SAFETENSORS_NAMES[specs[n].dtype]), n))
    header: dict = {} if metadata is None else {"__metadata__": metadata}
    offset = 0
    for name in order:
        size = specs[name].numel() * specs[name].element_size()
        header[name] = {"dtype": _SAFETENSORS_NAMES[specs[name].dtype], "shape": list(specs[name].shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name in order:
            tensor = make[name]("cpu").contiguous()
            if (tensor.dtype, tuple(tensor.shape)) != (specs[name].dtype, tuple(specs[name].shape)):
                raise ValueError(f"{name}: made {tensor.dtype} {tuple(tensor.shape)}, announced "
                                 f"{specs[name].dtype} {tuple(specs[name].shape)}")
            tensor.reshape(-1).view(torch.uint8).numpy().tofile(f)


def hub_name(name: str) -> str:
    """Our decoder tensor name as `Gemma3ForCausalLM` checkpoints spell it."""
    return name if name == "lm_head.weight" else f"model.{name}"


def write_hf_folder(folder: Path, config: GemmaConfig, state: dict[str, torch.Tensor],
                    tokenizer_model: bytes | None, dtype: torch.dtype = torch.float32) -> None:
    """Write config.json, model.safetensors (HF names) and tokenizer.model into an existing folder."""
    tensors = {hub_name(k): v.to(dtype).contiguous() for k, v in sorted(state.items())}
    save_safetensors(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    write_hf_metadata(folder, config, tokenizer_model)


def write_hf_metadata(folder: Path, config: GemmaConfig, tokenizer_model: bytes | None) -> None:
    """Everything of an HF folder but the weights: config.json, generation_config.json and, with a
    tokenizer, tokenizer.model and tokenizer_config.json."""
    (folder / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2, sort_keys=True) + "\n")
    if tokenizer_model is not None:
        (folder / "tokenizer.model").write_bytes(tokenizer_model)
        special = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False, **special},
            indent=2, sort_keys=True) + "\n")
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": list(config.eos_token_ids),
                  "pad_token_id": config.pad_token_id}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")

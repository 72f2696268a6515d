"""Hugging Face checkpoint folders: read and write `config.json` + safetensors in `Gemma3ForCausalLM` layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
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
    rename = _vision_name if vision else _decoder_name
    state: dict[str, torch.Tensor] = {}
    for path in _safetensors_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    ours = rename(name)
                    if ours is not None:
                        state[ours] = f.get_tensor(name).to(dtype)
        except (SafetensorError, OSError) as e:
            what = "is a folder, not a safetensors file" if path.is_dir() else f"truncated or corrupt safetensors file ({e})"
            raise GemmaEdgeError(f"{path}: {what}; download or convert the checkpoint again") from None
    return state


def check_and_load(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy `state` into `model`, naming every missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", True):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
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
        if not torch.isfinite(tensor).all():
            raise GemmaEdgeError(f"{source}: tensor {name} contains NaN or Inf; the checkpoint is corrupt")
    model.load_state_dict(state, strict=True)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, its I/O failures (a full disk) raised as the OSError they are."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        raise OSError(f"writing {path.name} failed ({e})") from None


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

"""llama.cpp GGUF files of Gemma 3: config, dequantized weights and the SentencePiece vocabulary.

llama.cpp's converter stores every Gemma norm weight with the +1 folded in (`w + 1`), so we subtract it;
q/k projections are not permuted for Gemma (NeoX-style RoPE), so they load as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .config import GemmaConfig, RopeConfig, gemma3_layer_types
from .errors import GemmaEdgeError
from .tokenizer import sentencepiece_model_from_vocab

_GLOBAL_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _our_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def _open(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise GemmaEdgeError(f"{path}: no such file") from None
    except (ValueError, IndexError, OSError) as e:
        raise GemmaEdgeError(f"{path}: not a readable GGUF file ({e}); it may be truncated — download it again") from None


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _open_gemma3(path: Path):
    reader = _open(path)
    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise GemmaEdgeError(f"{path}: GGUF architecture is {arch!r}, not 'gemma3'; "
                             "gemma-edge reads Gemma 3 GGUF files only")
    return reader


def read_gguf_config(path: str | Path) -> GemmaConfig:
    """The config alone, from the GGUF metadata (no weights are dequantized)."""
    path = Path(path)
    return _config(_open_gemma3(path), path)


def read_gguf_tokenizer(path: str | Path) -> bytes:
    """The rebuilt `tokenizer.model` alone (no weights are dequantized)."""
    path = Path(path)
    return _tokenizer_model(_open_gemma3(path), path)


def read_gguf(path: str | Path, progress: bool = True) -> tuple[GemmaConfig, dict[str, torch.Tensor], bytes]:
    """Config, float32 state dict (our names) and a rebuilt `tokenizer.model` from a Gemma 3 GGUF."""
    import gguf

    path = Path(path)
    reader = _open_gemma3(path)
    config = _config(reader, path)
    state: dict[str, torch.Tensor] = {}
    tensors = [t for t in reader.tensors if _our_name(t.name) is not None]
    for t in tqdm(tensors, desc=f"dequantize {path.name}", unit="tensor", disable=not progress):
        name = _our_name(t.name)
        try:
            data = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise GemmaEdgeError(f"{path}: tensor {t.name} uses GGUF type {t.tensor_type.name}, "
                                 "which the gguf package cannot dequantize") from None
        tensor = torch.from_numpy(np.array(data, dtype=np.float32)).reshape(
            tuple(int(d) for d in reversed(t.shape)))
        if name.endswith("norm.weight"):
            tensor = tensor - 1.0
        state[name] = tensor
    return config, state, _tokenizer_model(reader, path)


def _config(reader, path: Path) -> GemmaConfig:
    def need(key: str):
        value = _field(reader, f"gemma3.{key}")
        if value is None:
            raise GemmaEdgeError(f"{path}: GGUF metadata lacks gemma3.{key}; the file is not a complete Gemma 3 export")
        return value

    hidden, heads, layers = int(need("embedding_length")), int(need("attention.head_count")), int(need("block_count"))
    head_dim = int(need("attention.key_length"))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if tokens is None:
        raise GemmaEdgeError(f"{path}: GGUF has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    scaling = _field(reader, "gemma3.rope.scaling.type")
    factor = float(_field(reader, "gemma3.rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
    # llama.cpp: 27B scales queries by 1/sqrt(hidden/heads), every other size by 1/sqrt(head_dim).
    query_scalar = hidden / heads if layers == 62 else head_dim
    eos = int(_field(reader, "tokenizer.ggml.eos_token_id", 1))
    end_of_turn = [i for i, t in enumerate(tokens[:1024]) if t == "<end_of_turn>"]
    return GemmaConfig(
        vocab_size=len(tokens),
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(need("attention.head_count_kv")),
        head_dim=head_dim,
        sliding_window=int(need("attention.sliding_window")),
        layer_types=gemma3_layer_types(layers),
        rope_local=RopeConfig(10_000.0),
        rope_global=RopeConfig(float(_field(reader, "gemma3.rope.freq_base", 1_000_000.0)), factor),
        query_pre_attn_scalar=float(query_scalar),
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(need("context_length")),
        tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 2)),
        eos_token_ids=tuple([eos] + end_of_turn),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
    )


def _tokenizer_model(reader, path: Path) -> bytes:
    model = _field(reader, "tokenizer.ggml.model")
    if model != "llama":
        raise GemmaEdgeError(f"{path}: tokenizer type {model!r} is not SentencePiece ('llama')")
    return sentencepiece_model_from_vocab(
        pieces=list(_field(reader, "tokenizer.ggml.tokens")),
        scores=[float(s) for s in _field(reader, "tokenizer.ggml.scores")],
        types=[int(t) for t in _field(reader, "tokenizer.ggml.token_type")],
        unk_id=int(_field(reader, "tokenizer.ggml.unknown_token_id", 3)),
        bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 2)),
        eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 1)),
        pad_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
    )

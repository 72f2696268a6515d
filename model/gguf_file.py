"""llama.cpp GGUF files of Gemma 3: config, dequantized weights and the SentencePiece vocabulary; and a
bfloat16 GGUF written from a float checkpoint (`write_gguf`), llama.cpp's side of a benchmark for sizes
no GGUF was published for.

llama.cpp's converter stores every Gemma norm weight with the +1 folded in (`w + 1`), so we subtract it
on reading and add it on writing; q/k projections are not permuted for Gemma (NeoX-style RoPE), so they
go as they are.
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


_GLOBAL_GGUF_NAMES = {ours: theirs for theirs, ours in _GLOBAL_NAMES.items()}
_LAYER_GGUF_NAMES = {ours: theirs for theirs, ours in _LAYER_NAMES.items()}


def _gguf_name(our_name: str) -> str:
    if our_name in _GLOBAL_GGUF_NAMES:
        return _GLOBAL_GGUF_NAMES[our_name]
    _, index, *module, leaf = our_name.split(".")  # layers.{i}.{module path}.{weight}
    return f"blk.{index}.{_LAYER_GGUF_NAMES['.'.join(module)]}.{leaf}"


def write_gguf(source: str | Path, out: str | Path, progress: bool = True) -> Path:
    """`source`'s decoder as a Gemma 3 GGUF the way llama.cpp's `convert_hf_to_gguf.py` writes one: the
    matrices in bfloat16 (exact for a bf16 checkpoint), norms as float32 `1 + w`, the tokenizer.model's
    pieces; `write_quantized_gguf` has llama.cpp turn it into Q4_0 and the like. Tensors are streamed one at
    a time (the 4B's 8 GB never sit in memory); the file appears only once written whole."""
    from .atomic import atomic_file

    with atomic_file(Path(out)) as tmp:
        _write_gguf(source, tmp, progress, label=Path(out).name)
    return Path(out)


def _write_gguf(source: str | Path, path: Path, progress: bool, label: str) -> None:
    """`write_gguf` into `path` (`label`: the name its progress bar shows)."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as sp_pb

    from .loader import iter_weights, read_config

    c = read_config(source)
    tok = Path(source) / "tokenizer.model"
    if not tok.is_file():
        raise GemmaEdgeError(f"{tok}: missing; a GGUF carries the vocabulary, copy the checkpoint's tokenizer.model")
    sp = sp_pb.ModelProto()
    sp.ParseFromString(tok.read_bytes())

    def as_stored(name: str, tensor: torch.Tensor) -> np.ndarray:
        if name.endswith("norm.weight"):
            return (tensor.float() + 1.0).numpy()
        return tensor.to(torch.bfloat16).view(torch.int16).numpy()  # raw bf16 bits

    def weights():  # as the folder stores them (dtype None): a float32 norm keeps its digits
        return iter_weights(source, dtype=None)

    # GGUF lists every tensor before the data, in the order the data follows: the shards' order, read
    # once for it (reading 8 GB is seconds; holding it is what the 4B cannot afford)
    shapes = {name: tuple(t.shape) for name, t in weights()
              if name != "lm_head.weight" or not c.tie_word_embeddings}
    w = gguf.GGUFWriter(path, "gemma3")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_heads)
    w.add_head_count_kv(c.num_kv_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_global.theta)
    if c.rope_global.factor != 1.0:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(c.rope_global.factor)
    w.add_sliding_window(c.sliding_window)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    # SentencePiece's and llama.cpp's token types number alike; a table with more rows than pieces (the
    # 4B's 262,208 against 262,144) gets unused [PAD{id}] pieces, as llama.cpp's converter pads it
    pads = range(len(sp.pieces), c.vocab_size)
    w.add_token_list([p.piece.encode() for p in sp.pieces] + [f"[PAD{i}]".encode() for i in pads])
    w.add_token_scores([p.score for p in sp.pieces] + [-1000.0] * len(pads))
    w.add_token_types([int(p.type) for p in sp.pieces] + [int(sp_pb.ModelProto.SentencePiece.UNUSED)] * len(pads))
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_ids[0])
    w.add_unk_token_id(sp.trainer_spec.unk_id)
    w.add_pad_token_id(c.pad_token_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    for name, shape in shapes.items():
        norm = name.endswith("norm.weight")
        nbytes = int(np.prod(shape)) * (4 if norm else 2)
        w.add_tensor_info(_gguf_name(name), shape, np.dtype(np.float32 if norm else np.int16), nbytes,
                          raw_dtype=gguf.GGMLQuantizationType.F32 if norm else gguf.GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    stored = ((name, t) for name, t in weights() if name in shapes)
    for name, tensor in tqdm(stored, total=len(shapes), desc=f"write {label}", unit="tensor",
                             disable=not progress):
        w.write_tensor_data(as_stored(name, tensor))
    w.close()


GGUF_TYPES = {"bf16": None, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers


def write_quantized_gguf(source: str | Path, out: str | Path, gguf_type: str = "q4_0", progress: bool = True,
                         threads: int | None = None) -> Path:
    """`write_gguf`, then llama.cpp's own quantizer (`llama_model_quantize`, what `llama-quantize` runs) to
    `gguf_type` with its default choices per tensor; the bfloat16 file in between is deleted."""
    import os

    from .atomic import atomic_file, scratch_path

    if gguf_type not in GGUF_TYPES:
        raise GemmaEdgeError(f"GGUF type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    if GGUF_TYPES[gguf_type] is None:
        return write_gguf(source, out, progress)
    try:
        import llama_cpp
    except ImportError:
        raise GemmaEdgeError(f"{out}: quantizing a GGUF to {gguf_type} runs llama.cpp; pip install llama-cpp-python "
                             "(or write --type bf16)") from None
    with atomic_file(Path(out)) as tmp:
        bf16 = scratch_path(out)
        try:
            _write_gguf(source, bf16, progress, label=Path(out).name)
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = GGUF_TYPES[gguf_type]
            params.nthread = threads or os.cpu_count() or 1
            if llama_cpp.llama_model_quantize(str(bf16).encode(), str(tmp).encode(), params) != 0:
                raise GemmaEdgeError(f"{out}: llama.cpp could not quantize the GGUF to {gguf_type}")
        finally:
            bf16.unlink(missing_ok=True)
    return Path(out)

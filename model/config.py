"""GemmaConfig: the shape and semantics of a Gemma 3 text decoder, round-tripping HF `config.json`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GemmaEdgeError

SLIDING = "sliding_attention"
GLOBAL = "full_attention"
MODEL_TYPES = ("gemma3_text", "gemma3")  # Gemma 3 text decoders and multimodal checkpoints
_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim", "sliding_window", "max_position_embeddings")

# Gemma3TextConfig defaults in transformers: a config.json may leave any of these out.
_HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "tie_word_embeddings": True,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
}


def gemma3_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's interleave: `pattern - 1` sliding layers then one global layer, first layer sliding."""
    return tuple(GLOBAL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers))


@dataclass(frozen=True)
class RopeConfig:
    """RoPE for one layer type: base frequency and linear position scaling (positions divided by `factor`)."""

    theta: float
    factor: float = 1.0


@dataclass(frozen=True)
class GemmaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int
    layer_types: tuple[str, ...]
    rope_local: RopeConfig = RopeConfig(10_000.0)
    rope_global: RopeConfig = RopeConfig(1_000_000.0)
    query_pre_attn_scalar: float = 256.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32_768
    tie_word_embeddings: bool = True
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    hidden_activation: str = "gelu_pytorch_tanh"
    bos_token_id: int = 2
    eos_token_ids: tuple[int, ...] = (1,)
    pad_token_id: int = 0
    image_token_id: int | None = None  # multimodal (4B+) checkpoints: the image soft-token placeholder
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)!r} must be a positive integer" for name in _POSITIVE_INTS
                    if type(getattr(self, name)) is not int or getattr(self, name) < 1]
        problems += [f"{name}={getattr(self, name)!r} must be positive" for name in ("rms_norm_eps", "query_pre_attn_scalar")
                     if not getattr(self, name) > 0]
        if problems:  # the checks below divide by these
            raise GemmaEdgeError("invalid Gemma 3 config: " + "; ".join(problems))
        if len(self.layer_types) != self.num_layers:
            problems.append(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        bad = sorted(set(self.layer_types) - {SLIDING, GLOBAL})
        if bad:
            problems.append(f"unknown layer types {bad} (expected {SLIDING!r} or {GLOBAL!r})")
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        ids = (self.bos_token_id, self.pad_token_id, *self.eos_token_ids)
        if not self.eos_token_ids or any(type(i) is not int or not 0 <= i < self.vocab_size for i in ids):
            problems.append(f"special token ids {list(ids)} must lie in the vocabulary (0..{self.vocab_size - 1})")
        if self.attn_logit_softcapping is not None:
            problems.append("attn_logit_softcapping is Gemma 2's; Gemma 3 has no attention soft-cap (set it to null)")
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            problems.append(f"hidden_activation={self.hidden_activation!r} is not Gemma's tanh-GELU")
        if problems:
            raise GemmaEdgeError("invalid Gemma 3 config: " + "; ".join(problems))

    # ---- derived facts -------------------------------------------------------------------------
    @property
    def num_kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    def rope_for(self, layer: int) -> RopeConfig:
        return self.rope_local if self.is_sliding(layer) else self.rope_global

    # ---- HF config.json ------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "GemmaConfig":
        """Read a Gemma 3 text config, or the `text_config` of a multimodal (4B+) config."""
        if not isinstance(d, dict):
            raise GemmaEdgeError(f"config.json holds a JSON {type(d).__name__}, not an object")
        if d.get("model_type", MODEL_TYPES[0]) not in MODEL_TYPES:
            raise GemmaEdgeError(f"model_type {d['model_type']!r} is not Gemma 3 (expected one of {MODEL_TYPES})")
        image_token = next((d[k] for k in ("image_token_id", "image_token_index") if d.get(k) is not None), None)
        if "text_config" in d:
            d = d["text_config"] or {}
            if not isinstance(d, dict):
                raise GemmaEdgeError("text_config is not a JSON object")
        d = {**_HF_DEFAULTS, **{k: v for k, v in d.items() if v is not None or k.endswith("softcapping")}}
        n = _whole(d, "num_hidden_layers")
        layer_types = d.get("layer_types") or gemma3_layer_types(n, int(d.get("sliding_window_pattern", 6)))
        local, global_ = _read_rope(d)
        eos = d["eos_token_id"]
        eos_ids = tuple(_whole({"eos_token_id": e}, "eos_token_id")
                        for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
        return cls(
            vocab_size=_whole(d, "vocab_size"),
            hidden_size=_whole(d, "hidden_size"),
            intermediate_size=_whole(d, "intermediate_size"),
            num_layers=n,
            num_heads=_whole(d, "num_attention_heads"),
            num_kv_heads=_whole(d, "num_key_value_heads"),
            head_dim=_whole(d, "head_dim"),
            sliding_window=_whole(d, "sliding_window"),
            layer_types=tuple(layer_types),
            rope_local=local,
            rope_global=global_,
            query_pre_attn_scalar=float(d["query_pre_attn_scalar"]),
            rms_norm_eps=float(d["rms_norm_eps"]),
            max_position_embeddings=_whole(d, "max_position_embeddings"),
            tie_word_embeddings=bool(d["tie_word_embeddings"]),
            attn_logit_softcapping=d["attn_logit_softcapping"],
            final_logit_softcapping=d["final_logit_softcapping"],
            hidden_activation=str(d["hidden_activation"]),
            bos_token_id=_whole(d, "bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=_whole(d, "pad_token_id"),
            image_token_id=None if image_token is None else int(image_token),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A `Gemma3ForCausalLM` config.json: transformers 5.x `rope_parameters` plus the 4.x keys."""
        def rope(r: RopeConfig) -> dict[str, Any]:
            if r.factor == 1.0:
                return {"rope_type": "default", "rope_theta": r.theta}
            return {"rope_type": "linear", "factor": r.factor, "rope_theta": r.theta}

        return {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types),
            "rope_parameters": {SLIDING: rope(self.rope_local), GLOBAL: rope(self.rope_global)},
            "query_pre_attn_scalar": _int_if_whole(self.query_pre_attn_scalar),
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attn_logit_softcapping": self.attn_logit_softcapping,
            "final_logit_softcapping": self.final_logit_softcapping,
            "hidden_activation": self.hidden_activation,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else self.eos_token_ids[0],
            "pad_token_id": self.pad_token_id,
            "attention_bias": False,
            "torch_dtype": "float32",
            **({} if self.image_token_id is None else {"image_token_id": self.image_token_id}),
        }

    @classmethod
    def from_json_file(cls, path: str | Path) -> "GemmaConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise GemmaEdgeError(f"{path}: no config.json; an HF checkpoint folder needs one") from None
        except IsADirectoryError:
            raise GemmaEdgeError(f"{path}: is a folder, not a file; restore config.json from the checkpoint") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GemmaEdgeError(f"{path}: not valid JSON ({e}); restore the file from the checkpoint") from None
        try:
            return cls.from_hf_dict(d)
        except GemmaEdgeError as e:
            raise GemmaEdgeError(f"{path}: {e}") from None
        except (KeyError, TypeError, ValueError, ArithmeticError) as e:
            raise GemmaEdgeError(f"{path}: unreadable Gemma 3 config ({e!r})") from None

    def replace(self, **changes: Any) -> "GemmaConfig":
        return dataclasses.replace(self, **changes)


def _whole(d: dict[str, Any], key: str) -> int:
    """An integer field of config.json: an int, or a float with no fraction (64.7 is refused, not cut)."""
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise GemmaEdgeError(f"{key}={v!r} must be an integer")
    return int(v)


def _int_if_whole(x: float) -> int | float:
    """transformers' strict config wants an int where the value is whole."""
    return int(x) if float(x).is_integer() else x


def _read_rope(d: dict[str, Any]) -> tuple[RopeConfig, RopeConfig]:
    """RoPE per layer type from either transformers 5.x `rope_parameters` or the 4.x flat keys."""
    params = d.get("rope_parameters")
    if isinstance(params, dict) and (SLIDING in params or GLOBAL in params):
        def one(p: dict[str, Any] | None, default_theta: float) -> RopeConfig:
            p = p or {}
            kind = p.get("rope_type", p.get("type", "default"))
            if kind not in ("default", "linear"):
                raise GemmaEdgeError(f"RoPE type {kind!r} is not supported (Gemma 3 uses default or linear)")
            return RopeConfig(float(p.get("rope_theta", default_theta)), float(p.get("factor", 1.0)) if kind == "linear" else 1.0)

        return one(params.get(SLIDING), 10_000.0), one(params.get(GLOBAL), 1_000_000.0)
    scaling = d.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind not in ("default", "linear"):
        raise GemmaEdgeError(f"RoPE scaling {kind!r} is not supported (Gemma 3 uses linear)")
    factor = float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0
    return (
        RopeConfig(float(d.get("rope_local_base_freq", 10_000.0))),
        RopeConfig(float(d.get("rope_theta", 1_000_000.0)), factor),
    )


def _preset(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, window: int,
            max_pos: int, global_factor: float = 1.0) -> GemmaConfig:
    return GemmaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, head_dim=256, sliding_window=window,
        layer_types=gemma3_layer_types(layers), rope_global=RopeConfig(1_000_000.0, global_factor),
        query_pre_attn_scalar=256.0, max_position_embeddings=max_pos, eos_token_ids=(1, 106),
    )


# Shapes of the released text decoders (Gemma 3 report, HF config.json), for random-weight benchmarks.
PRESETS: dict[str, GemmaConfig] = {
    "270m": _preset(262_144, 640, 2048, 18, 4, 1, 512, 32_768),
    "1b": _preset(262_144, 1152, 6912, 26, 4, 1, 512, 32_768),
    "4b": _preset(262_208, 2560, 10_240, 34, 8, 4, 1024, 131_072, global_factor=8.0),
}

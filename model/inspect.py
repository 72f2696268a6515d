"""Sizes of a config: parameters, weight memory per format, and the KV-cache planner."""

from __future__ import annotations

from dataclasses import dataclass

from .config import GemmaConfig

# Bytes per weight including per-block scales: int8 per-channel ~1, int4 block-32 with fp16 scales 0.5 + 2/32.
WEIGHT_FORMATS = {"float32": 4.0, "bf16": 2.0, "int8": 1.0, "int4 (block 32)": 0.5 + 2 / 32}


@dataclass(frozen=True)
class ParamCounts:
    embedding: int
    attention: int
    mlp: int
    norms: int
    lm_head: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding - self.lm_head


def param_counts(c: GemmaConfig) -> ParamCounts:
    h, d = c.hidden_size, c.head_dim
    attn = h * c.num_heads * d * 2 + h * c.num_kv_heads * d * 2
    return ParamCounts(
        embedding=c.vocab_size * h,
        attention=c.num_layers * attn,
        mlp=c.num_layers * 3 * h * c.intermediate_size,
        norms=c.num_layers * (4 * h + 2 * d) + h,
        lm_head=0 if c.tie_word_embeddings else c.vocab_size * h,
    )


def kv_cache_bytes(c: GemmaConfig, context: int, bytes_per_value: float = 2.0, ring: bool = True) -> int:
    """K and V for every layer at `context` tokens; sliding layers hold only `sliding_window` with a ring."""
    per_token_layer = 2 * c.num_kv_heads * c.head_dim * bytes_per_value
    tokens = [min(context, c.sliding_window) if ring and c.is_sliding(i) else context for i in range(c.num_layers)]
    return int(sum(tokens) * per_token_layer)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def describe(c: GemmaConfig, context: int = 32_768, kv_bytes: float = 2.0) -> str:
    """The `gemma-edge inspect` report as text."""
    p = param_counts(c)
    pattern = "".join("L" if c.is_sliding(i) else "G" for i in range(c.num_layers))
    lines = [
        f"layers              {c.num_layers}  pattern {pattern}  (L sliding, G global)",
        f"hidden / mlp        {c.hidden_size} / {c.intermediate_size}",
        f"heads q / kv / dim  {c.num_heads} / {c.num_kv_heads} / {c.head_dim}   query scale 1/sqrt({c.query_pre_attn_scalar:g})",
        f"sliding window      {c.sliding_window}",
        f"rope local          theta {c.rope_local.theta:g}  linear factor {c.rope_local.factor:g}",
        f"rope global         theta {c.rope_global.theta:g}  linear factor {c.rope_global.factor:g}",
        f"vocab               {c.vocab_size}  (tied LM head: {c.tie_word_embeddings})",
        f"max context         {c.max_position_embeddings}",
        "",
        f"parameters          {p.total:,} total",
        f"  embedding         {p.embedding:,}",
        f"  non-embedding     {p.non_embedding:,}  (attention {p.attention:,}, mlp {p.mlp:,}, norms {p.norms:,})",
        f"  lm head           {'tied' if not p.lm_head else f'{p.lm_head:,}'}",
        "",
        "weight memory",
    ]
    for name, bpw in WEIGHT_FORMATS.items():
        lines.append(f"  {name:<17} {_mib(p.total * bpw)}")
    ring = kv_cache_bytes(c, context, kv_bytes, ring=True)
    full = kv_cache_bytes(c, context, kv_bytes, ring=False)
    lines += [
        "",
        f"KV cache at {context} tokens ({kv_bytes:g} bytes/value)",
        f"  ring caches for sliding layers  {_mib(ring)}",
        f"  all layers global               {_mib(full)}",
        f"  saving                          {1 - ring / full:.1%}",
    ]
    return "\n".join(lines)

"""Deterministic tiny random Gemma 3 checkpoints in HF layout, so tests never need a download."""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_dir
from .config import GemmaConfig, RopeConfig, gemma3_layer_types
from .hf_checkpoint import write_hf_folder
from .random_checkpoint import decoder_shapes, weight_mean_std
from .tokenizer import Tokenizer, tiny_tokenizer_model


def tiny_config(num_layers: int = 6, num_heads: int = 4, num_kv_heads: int = 1, head_dim: int = 16,
                hidden_size: int = 64, intermediate_size: int = 128, sliding_window: int = 8,
                global_rope_factor: float = 1.0, max_position_embeddings: int = 256,
                layer_types: tuple[str, ...] | None = None, **overrides) -> GemmaConfig:
    """A small config with Gemma 3's structure; its vocabulary matches `tiny_tokenizer_model()`."""
    vocab = Tokenizer(tiny_tokenizer_model()).vocab_size
    config = GemmaConfig(
        vocab_size=vocab, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
        sliding_window=sliding_window, layer_types=layer_types or gemma3_layer_types(num_layers),
        rope_global=RopeConfig(1_000_000.0, global_rope_factor), query_pre_attn_scalar=float(head_dim),
        max_position_embeddings=max_position_embeddings, eos_token_ids=(1, 6),
    )
    return config.replace(**overrides) if overrides else config


def random_state_dict(config: GemmaConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Float32 weights drawn from one seeded generator, scaled as `random_checkpoint.weight_mean_std` says; norms
    get non-zero values so (1 + w) is exercised."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in decoder_shapes(config).items():
        mean, std = weight_mean_std(name, shape)
        state[name] = torch.randn(shape, generator=gen) * std + mean
    return state


def write_tiny_checkpoint(out: str | Path, config: GemmaConfig | None = None, seed: int = 0,
                          overwrite: bool = False) -> Path:
    """Write config.json, model.safetensors and tokenizer.model for a random model; returns the folder."""
    config = config or tiny_config()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_hf_folder(tmp, config, random_state_dict(config, seed), tiny_tokenizer_model())
    return Path(out)

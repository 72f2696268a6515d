"""The Gemma 3 text decoder, in one readable file (in the spirit of gpt-fast's model.py).

`Gemma(config, max_seq_len)` holds its KV caches as buffers: a full-length cache for global layers and a
ring of `sliding_window` slots for sliding layers (slot = position mod window; the mask comes from the
positions stored beside the keys). `forward(tokens[1, T], input_pos[T])` prefills any length up to
`max_seq_len` in one call, longer than the window included, and decodes single tokens; positions
arrive in order (a session starts at 0 after `reset_caches`). Exporters trace this same module with
the caches swapped for ones built on the runtime's fused ops; the masks (`attention_mask`,
`ring_key_positions`) are shared, so there is one definition of the attention semantics.

Weight names follow Hugging Face's `Gemma3ForCausalLM` without the `model.` prefix, so loading is a
rename-free copy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import GemmaConfig, RopeConfig
from .errors import GemmaEdgeError


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: computed in float32, scaled by (1 + weight)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = as_dtype(x, torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return as_dtype(xf * (1.0 + as_dtype(self.weight, torch.float32)), x.dtype)


def as_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x.to(dtype)`, written so that a traced graph holds no cast where the dtype already matches (an
    exporter's passes pay for every node)."""
    return x if x.dtype == dtype else x.to(dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies; linear scaling divides positions by `factor`, i.e. the frequencies."""
    inv = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return inv / rope.factor


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, head_dim], half-split (NeoX) layout
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate=rotate_half) -> torch.Tensor:
    """x: [B, T, heads, head_dim], cos/sin [T, 1, head_dim]; rotates the two halves of head_dim (`rotate`:
    an exporter may spell rotate_half another way)."""
    return x * as_dtype(cos, x.dtype) + rotate(x) * as_dtype(sin, x.dtype)


def heads_first(*xs: torch.Tensor) -> list[torch.Tensor]:
    """[B, T, heads, D] -> [B, heads, T, D]: the layer hands the caches the first; the reference caches and
    SDPA use the second (ExecuTorch's fused ops take the first as it is)."""
    return [x.transpose(1, 2) for x in xs]


def sdpa(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention in [B, heads, T, D] layout; keys/values may have fewer (grouped) heads."""
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != keys.shape[1])


def attention_mask(q_pos: torch.Tensor, key_pos: torch.Tensor, window: int | None,
                   q_group: torch.Tensor | None = None, key_group: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean [T, S]: key is filled (position >= 0), not in the future and (sliding) inside the window.
    With image groups (`image_groups`), a query inside an image also sees every key of the same image,
    later ones included: Gemma 3's bidirectional image attention, still cut by the window, as in HF."""
    q = q_pos[:, None]
    k = key_pos[None, :]
    # (logical_and/_or, not & and |: ExecuTorch would decompose those, and with them the whole program, again)
    allowed = torch.logical_and(k >= 0, k <= q)
    if q_group is not None and key_group is not None:
        same_image = torch.logical_and(q_group[:, None] >= 0, q_group[:, None] == key_group[None, :])
        allowed = torch.logical_or(allowed, same_image)
    if window is not None:  # q - k < window, compared without materializing the [T, S] differences
        allowed = torch.logical_and(allowed, k > q - window)
    return allowed


def image_groups(is_image: torch.Tensor) -> torch.Tensor:
    """is_image [T] (bool) -> [T]: n for the positions of the n-th run of consecutive image soft tokens, -1
    for text. Each image (or Pan & Scan crop) is its own run, framed by `<start_of_image>`/`<end_of_image>`."""
    x = is_image.long()
    before = F.pad(x, (1, 0))[:-1]  # (a bool concatenation would pin T in torch.export)
    return torch.where(is_image, (x > before).long().cumsum(0) - 1, -1)


def full_cache_key_groups(groups: torch.Tensor, input_pos: torch.Tensor, slots: int) -> torch.Tensor:
    """Image groups of a full cache's slots for this call: the call's groups at its positions, -1 elsewhere
    (an image's tokens all arrive in one call, so earlier calls hold none of its keys)."""
    return torch.full((slots,), -1).index_put((input_pos,), groups)


def ring_key_groups(groups: torch.Tensor, window: int) -> torch.Tensor:
    """Image groups of [ring before the call ++ the call's keys], the keys a sliding layer attends over."""
    return torch.cat((torch.full((window,), -1), groups))


def ring_key_positions(start: torch.Tensor, window: int) -> torch.Tensor:
    """Positions held by ring slots 0..window-1 before a call starting at `start` (a 0-d tensor): slot s
    holds the latest p < start with p % window == s; negative means empty. Positions arrive in order,
    so they are a function of `start` and need no buffer."""
    slots = torch.arange(0, window, 1, device=start.device)  # (start, end, step: the overload ExecuTorch keeps)
    # (start - 1 - s) mod window, written with a non-negative dividend: runtimes disagree on the sign
    # of a remainder of negative numbers (ExecuTorch's kernel differs from torch.remainder).
    return start - 1 - (start + window - 1 - slots) % window


def register_kv(module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Zeroed K and V buffers; not saved in state dicts (they are state, not weights)."""
    module.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
    module.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)


def reset_kv(module: nn.Module, batch: int) -> None:
    """Zero K and V; new buffers only when the batch changes (the exporters trace batch 1)."""
    if module.k.shape[0] == batch:
        module.k.zero_()
        module.v.zero_()
    else:
        for name in ("k", "v"):
            old = getattr(module, name)
            setattr(module, name, old.new_zeros((batch, *old.shape[1:])))


class FullKVCache(nn.Module):
    """Global layers: one slot per position up to `max_seq_len`."""

    def __init__(self, num_kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        register_kv(self, (1, num_kv_heads, max_seq_len, head_dim), dtype)

    def reset(self, batch: int = 1) -> None:
        reset_kv(self, batch)

    def attend(self, q, k, v, input_pos: torch.Tensor, scale: float, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Store the new keys/values at their positions, then attend causally over the cache.
        q, k, v and the result are [B, T, heads, D]."""
        q, k, v = heads_first(q, k, v)
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        key_pos = torch.arange(self.k.shape[2], device=input_pos.device)
        key_group = None if groups is None else full_cache_key_groups(groups, input_pos, self.k.shape[2])
        return sdpa(q, self.k, self.v, attention_mask(input_pos, key_pos, None, groups, key_group), scale).transpose(1, 2)


class RingKVCache(nn.Module):
    """Sliding layers: `window` slots, position p lives in slot p % window.

    Attention reads the ring as it was *before* this call plus the new keys, then the last `window` new
    keys are written. That keeps every key a query of this call may need, even when one prefill is
    longer than the window and the ring wraps inside it.
    """

    def __init__(self, num_kv_heads: int, window: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        self.window = window
        register_kv(self, (1, num_kv_heads, window, head_dim), dtype)

    def reset(self, batch: int = 1) -> None:
        reset_kv(self, batch)

    def attend(self, q, k, v, input_pos: torch.Tensor, scale: float, groups: torch.Tensor | None = None) -> torch.Tensor:
        """q, k, v and the result are [B, T, heads, D]."""
        q, k, v = heads_first(q, k, v)
        key_pos = torch.cat((ring_key_positions(input_pos[0], self.window), input_pos))
        key_group = None if groups is None else ring_key_groups(groups, self.window)
        mask = attention_mask(input_pos, key_pos, self.window, groups, key_group)
        out = sdpa(q, torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2), mask, scale)
        keep = min(k.shape[2], self.window)
        slots = input_pos[-keep:] % self.window
        self.k.index_copy_(2, slots, k[:, :, -keep:])
        self.v.index_copy_(2, slots, v[:, :, -keep:])
        return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, config: GemmaConfig, layer: int, max_seq_len: int, dtype: torch.dtype):
        super().__init__()
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.scale = c.query_pre_attn_scalar ** -0.5
        self.window = c.sliding_window if c.is_sliding(layer) else None
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)
        self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.rotate = rotate_half
        if self.window is not None:
            self.cache: nn.Module = RingKVCache(c.num_kv_heads, c.sliding_window, c.head_dim, dtype)
        else:
            self.cache = FullKVCache(c.num_kv_heads, max_seq_len, c.head_dim, dtype)

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                groups: torch.Tensor | None = None):
        b = x.shape[0]  # [B, T, heads, D] throughout (-1 for the length: exporters keep such views static-shaped)
        q = self.q_proj(x).view(b, -1, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, -1, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, -1, self.num_kv_heads, self.head_dim)
        q = apply_rope(self.q_norm(q), cos, sin, self.rotate)
        k = apply_rope(self.k_norm(k), cos, sin, self.rotate)
        # Image groups only when there are images: QAT's cache takes none, and text-only graphs stay as they were.
        out = (self.cache.attend(q, k, v, input_pos, self.scale) if groups is None
               else self.cache.attend(q, k, v, input_pos, self.scale, groups))
        return self.o_proj(out.reshape(b, -1, self.num_heads * self.head_dim))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """Gemma's activation, computed as transformers does (`gelu_pytorch_tanh`)."""
    return F.gelu(x, approximate="tanh")


def gelu_tanh_explicit(x: torch.Tensor) -> torch.Tensor:
    """The same function written out, for exporters. ExecuTorch's XNNPACK delegate lowers `aten.gelu` to
    the exact (erf) GELU whatever its `approximate` argument says, which moved the 270M's logits by ~1e-2.
    It is not the reference's activation because it differs from PyTorch's kernel by an ulp on ~1% of
    inputs, which moves the 270M's logits by up to 7.8e-4 against transformers."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class MLP(nn.Module):
    """GeGLU with tanh-GELU; `act` is swappable so an exporter can pick a lowering-safe spelling."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.act = gelu_tanh
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Norm before and after both attention and MLP (the 'sandwich' of Gemma 2/3)."""

    def __init__(self, config: GemmaConfig, layer: int, max_seq_len: int, dtype: torch.dtype):
        super().__init__()
        eps = config.rms_norm_eps
        self.is_sliding = config.is_sliding(layer)
        self.self_attn = Attention(config, layer, max_seq_len, dtype)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps)

    def forward(self, x, input_pos, cos, sin, groups=None):
        h = self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), input_pos, cos, sin, groups))
        x = x + h
        h = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x + h


LOGIT_CHUNK = 64  # positions per LM-head call with `logits_from` (a 64 x 262,144 float32 block is 64 MiB)


class Gemma(nn.Module):
    def __init__(self, config: GemmaConfig, max_seq_len: int | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.max_seq_len = max_seq_len or config.max_position_embeddings
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, self.max_seq_len, dtype) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False)
        self.embed_scale = math.sqrt(config.hidden_size)
        self.register_buffer("inv_freq_local", rope_inv_freq(config.rope_local, config.head_dim), persistent=False)
        self.register_buffer("inv_freq_global", rope_inv_freq(config.rope_global, config.head_dim), persistent=False)
        self.to(dtype)

    def init_buffers(self) -> None:
        """The state no checkpoint holds: RoPE frequencies and zeroed caches (`hf_checkpoint.load_weights`
        builds the model on the meta device and calls this once it has memory)."""
        self.inv_freq_local.copy_(rope_inv_freq(self.config.rope_local, self.config.head_dim))
        self.inv_freq_global.copy_(rope_inv_freq(self.config.rope_global, self.config.head_dim))
        self.reset_caches()

    def reset_caches(self, batch: int = 1) -> None:
        """Empty caches for `batch` sequences decoded side by side (calibration samples several at once)."""
        for layer in self.layers:
            layer.self_attn.cache.reset(batch)

    def hidden(self, x: torch.Tensor, input_pos: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Embedded (and scaled) inputs [B, T, hidden] -> final-norm hidden states; QAT calls this directly.
        `groups` ([T], from `image_groups`) makes each image's positions attend to each other."""
        local, global_ = self.rope_tables(input_pos)
        for layer in self.layers:
            cos, sin = local if layer.is_sliding else global_
            x = layer(x, input_pos, cos, sin, groups)
        return self.norm(x)

    def rope_tables(self, input_pos: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """[cos, sin] ([T, 1, head_dim]) at `input_pos` for sliding layers (local base) and for global ones."""
        return ([t.unsqueeze(1) for t in rope_cos_sin(self.inv_freq_local, input_pos)],
                [t.unsqueeze(1) for t in rope_cos_sin(self.inv_freq_global, input_pos)])

    def embed(self, tokens: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled token embeddings [1, T, hidden]; with `image_features` ([images, tokens per image, hidden],
        from `vision.VisionEncoder`) written, unscaled, over the image soft-token placeholders in order."""
        if image_features is not None:
            if self.config.image_token_id is None:
                raise GemmaEdgeError("this checkpoint's config.json names no image_token_id: "
                                     "a text-only Gemma 3 takes no images")
            is_image = tokens == self.config.image_token_id
            tokens = tokens.masked_fill(is_image, self.config.pad_token_id)  # placeholders may lie past the table
        x = self.embed_tokens(tokens)
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        if image_features is None:
            return x
        features = image_features.reshape(-1, x.shape[-1]).to(x.dtype)
        if int(is_image.sum()) != features.shape[0]:
            raise GemmaEdgeError(f"the prompt has {int(is_image.sum())} image soft tokens but the images give "
                                 f"{features.shape[0]}; build the prompt with image_processing.expand_image_tokens")
        return x.masked_scatter(is_image[..., None], features)

    def softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, last_logits_only: bool = False,
                image_features: torch.Tensor | None = None, logits_from: int | None = None) -> torch.Tensor:
        """tokens [B, T] at positions input_pos [T] -> logits [B, T, vocab] (or [B, 1, vocab]; with
        `logits_from`, [B, T - logits_from, vocab], computed LOGIT_CHUNK positions at a time: the head's
        transients stay small however long the prompt).
        B > 1 needs caches of that batch (`reset_caches(B)`) and no images. With `image_features` (B = 1),
        the image soft tokens of `tokens` take them and attend bidirectionally within each image; an
        image's tokens must all arrive in the same call."""
        groups = None
        if image_features is not None:
            groups = image_groups(tokens[0] == self.config.image_token_id)
        x = self.hidden(self.embed(tokens, image_features), input_pos, groups)
        if logits_from is None:
            return self.logits(x[:, -1:] if last_logits_only else x)
        return torch.cat([self.logits(x[:, i:i + LOGIT_CHUNK]) for i in range(logits_from, x.shape[1], LOGIT_CHUNK)],
                         dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final hidden states -> logits through the (tied) LM head and the soft-cap."""
        logits = F.linear(x, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(x)
        return self.softcap(logits)

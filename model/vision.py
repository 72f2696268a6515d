"""Gemma 3's image path (4B and up): a SigLIP vision tower and the multimodal projector.

An 896×896 image becomes 64×64 patches of 14 pixels; the SigLIP encoder (pre-LayerNorm transformer,
bidirectional) turns them into 4,096 vectors; the projector average-pools them 4×4 to 256, normalises
them with Gemma's RMSNorm and projects them to the decoder's width. Those 256 "soft tokens" replace the
`<image_soft_token>` placeholders of the prompt, and the decoder lets them attend to each other in both
directions (`gemma.image_groups`).

Module names follow Hugging Face's `SiglipVisionModel.vision_model` and `Gemma3MultiModalProjector`, so
loading a checkpoint is a prefix strip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GemmaEdgeError
from .gemma import RMSNorm, gelu_tanh

# SiglipVisionConfig's and Gemma3Config's defaults in transformers: a config.json may leave these out.
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower's shape, the projector's output width and the image token ids."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    text_hidden_size: int
    layer_norm_eps: float = 1e-6
    num_channels: int = 3
    mm_tokens_per_image: int = 256
    image_token_id: int = 262_144
    boi_token_id: int = 255_999
    eoi_token_id: int = 256_000

    def __post_init__(self) -> None:
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        side = round(self.mm_tokens_per_image ** 0.5)
        if side * side != self.mm_tokens_per_image or self.patches_per_side % max(side, 1):
            problems.append(f"mm_tokens_per_image={self.mm_tokens_per_image} is not a square that divides "
                            f"the {self.patches_per_side}x{self.patches_per_side} patch grid")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_heads}")
        if problems:
            raise GemmaEdgeError("invalid Gemma 3 vision config: " + "; ".join(problems))

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "VisionConfig | None":
        """The vision part of a multimodal `Gemma3Config` dict; None for a text-only config."""
        if "vision_config" not in d:
            return None
        v = {**_VISION_DEFAULTS, **{k: x for k, x in (d["vision_config"] or {}).items() if x is not None}}
        if v["hidden_act"] not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise GemmaEdgeError(f"vision hidden_act={v['hidden_act']!r} is not SigLIP's tanh-GELU")
        text = d.get("text_config") or {}

        def top(*names: str, default: int) -> int:
            return int(next((d[n] for n in names if d.get(n) is not None), default))

        return cls(
            hidden_size=int(v["hidden_size"]), intermediate_size=int(v["intermediate_size"]),
            num_layers=int(v["num_hidden_layers"]), num_heads=int(v["num_attention_heads"]),
            image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
            text_hidden_size=int(text.get("hidden_size", 2304)), layer_norm_eps=float(v["layer_norm_eps"]),
            num_channels=int(v["num_channels"]),
            mm_tokens_per_image=top("mm_tokens_per_image", default=256),
            image_token_id=top("image_token_id", "image_token_index", default=262_144),
            boi_token_id=top("boi_token_id", "boi_token_index", default=255_999),
            eoi_token_id=top("eoi_token_id", "eoi_token_index", default=256_000),
        )


class VisionEmbeddings(nn.Module):
    """Non-overlapping patches (a strided convolution) plus a learned position per patch."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, stride=c.patch_size)
        self.position_embedding = nn.Embedding(c.patches_per_side ** 2, c.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [N, patches, hidden]
        return x + self.position_embedding.weight


class VisionAttention(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.num_heads = c.num_heads
        self.q_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.k_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.v_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.out_proj = nn.Linear(c.hidden_size, c.hidden_size)
        # q, k, v [N, heads, patches, head_dim]: every patch sees every patch, scale 1/sqrt(head_dim); swappable
        # so an exporter can run it on a fused kernel
        self.attend = F.scaled_dot_product_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = (p(x).view(n, t, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = self.attend(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(n, t, d))


class VisionMLP(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.act = gelu_tanh
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.self_attn = VisionAttention(c)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = VisionMLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoderLayers(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(c) for _ in range(c.num_layers))


class VisionTower(nn.Module):
    """SigLIP's vision transformer without its pooling head (Gemma 3 reads the last hidden states)."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        self.embeddings = VisionEmbeddings(c)
        self.encoder = VisionEncoderLayers(c)
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class MultiModalProjector(nn.Module):
    """Average-pool the patch grid to mm_tokens_per_image vectors, RMSNorm them, project to the decoder."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        self.patches_per_side = c.patches_per_side
        self.kernel = c.patches_per_side // round(c.mm_tokens_per_image ** 0.5)
        self.mm_soft_emb_norm = RMSNorm(c.hidden_size, c.layer_norm_eps)
        self.mm_input_projection_weight = nn.Parameter(torch.zeros(c.hidden_size, c.text_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, d = x.shape
        grid = x.transpose(1, 2).reshape(n, d, self.patches_per_side, self.patches_per_side)
        pooled = F.avg_pool2d(grid, self.kernel, self.kernel).flatten(2).transpose(1, 2)
        return self.mm_soft_emb_norm(pooled) @ self.mm_input_projection_weight


class VisionEncoder(nn.Module):
    """pixels [N, 3, S, S] (normalised as `image_processing.preprocess` does) -> soft tokens
    [N, mm_tokens_per_image, text hidden size], one row of tokens per image or crop."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.vision_tower = VisionTower(config)
        self.multi_modal_projector = MultiModalProjector(config)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        c = self.config
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (c.num_channels, c.image_size, c.image_size):
            raise GemmaEdgeError(f"pixel values of shape {list(pixels.shape)}; the vision tower takes "
                                 f"[N, {c.num_channels}, {c.image_size}, {c.image_size}] (see image_processing.preprocess)")
        return self.multi_modal_projector(self.vision_tower(pixels))


def vision_shapes(multimodal: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tower's and projector's tensor names (ours) and shapes for a multimodal config.json, from the meta
    device (no memory): what a checkpoint writer draws and what quantize expects to read."""
    with torch.device("meta"):
        encoder = VisionEncoder(VisionConfig.from_hf_dict(multimodal))
    return {name: tuple(t.shape) for name, t in sorted(encoder.state_dict().items())}

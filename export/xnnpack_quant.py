"""Quantized modules for the `.pte`, built from a QuantizedCheckpoint's integers and scales as they are.

Linears become the pattern XNNPACK lowers to its dynamically-quantized kernels (qd8-f32-qc4w/qb4w/qc8w):
per-token int8 activation quant/dequant, then a `dequantize_per_channel(_group)` of our integer weight,
then linear. XNNPACK has no kernel for 4-bit weights with float activations, so every integer linear in
the `.pte` quantizes its input to int8 per token: for a weight-only recipe that is the one place where the
artifact computes differently from its quantized reference (measured in docs/executorch.md).
The embedding becomes ExecuTorch's `embedding_byte` / `embedding_4bit` kernel over the same integers.
No scale is ever recomputed from float weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge.calibration.checkpoint import QuantizedCheckpoint, fake_quantize_per_token_int8, is_vision
from gemma_edge.calibration.formats import QTensor
from gemma_edge.calibration.recipe import EMBEDDING, LM_HEAD
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.gemma import Gemma
from gemma_edge.model.vision import VisionEncoder


def register_quant_ops() -> None:
    import torch.ao.quantization.fx._decomposed  # noqa: F401  quantized_decomposed.* (de)quantize ops
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  embedding_byte / 4bit


def _check_supported(name: str, q: QTensor) -> None:
    if q.fmt.kind not in ("int4", "int8") or not q.fmt.symmetric:
        raise GemmaEdgeError(f"{name}: format {q.fmt.name} has no XNNPACK kernel in ExecuTorch; use a symmetric "
                             "int4/int8 recipe for .pte (fp8 exports to ONNX)")
    if q.scale is not None and (q.scale < 0).any():
        raise GemmaEdgeError(f"{name}: {int((q.scale < 0).sum())} blocks have negative scales (a Q4_0 grid import "
                             "keeps llama.cpp's signed scales) and XNNPACK accepts only positive ones; export this "
                             "checkpoint to ONNX, or make a .pte from `gemma-edge quantize` of the same weights")


class DynActIntLinear(nn.Module):
    """int8 per-token activations x symmetric int4/int8 weights (per channel or per block), float bias."""

    def __init__(self, q: QTensor, name: str, bias: torch.Tensor | None = None):
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        _check_supported(name, q)
        self.qmin, self.qmax = q.fmt.qrange
        self.group = q.fmt.block
        self.register_buffer("weight_int", q.qdata.to(torch.int8).contiguous())
        scale = q.scale.float()
        self.register_buffer("scales", scale.contiguous() if self.group else scale[:, 0].contiguous())
        self.register_buffer("zeros", torch.zeros_like(self.scales, dtype=torch.int8 if self.group else torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.quantized_decomposed
        x = fake_quantize_per_token_int8(x)
        if self.group:
            w = ops.dequantize_per_channel_group(self.weight_int, self.scales, self.zeros, self.qmin, self.qmax,
                                                 torch.int8, self.group, torch.float32)
        else:
            w = ops.dequantize_per_channel(self.weight_int, self.scales, self.zeros, 0, self.qmin, self.qmax,
                                           torch.int8, out_dtype=torch.float32)
        return F.linear(x, w, self.bias)


class QuantEmbedding(nn.Module):
    """ExecuTorch's quantized embedding kernels over the checkpoint's integers."""

    def __init__(self, q: QTensor):
        super().__init__()
        _check_supported(EMBEDDING, q)
        self.bits = q.fmt.bits
        self.qmin, self.qmax = q.fmt.qrange
        if self.bits == 4:  # embedding_4bit: high nibble first, stored offset by 8
            u = (q.qdata.to(torch.int16) + 8).to(torch.uint8)
            self.register_buffer("weight_int", (u[:, 0::2] << 4 | u[:, 1::2]).contiguous())
        else:
            self.register_buffer("weight_int", q.qdata.to(torch.int8).contiguous())
        scale = q.scale.float()
        self.register_buffer("scales", scale.contiguous() if q.fmt.block else scale[:, 0].contiguous())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        op = (torch.ops.quantized_decomposed.embedding_4bit if self.bits == 4
              else torch.ops.quantized_decomposed.embedding_byte)
        return op(self.weight_int, self.scales, None, self.qmin, self.qmax, tokens)


def quantized_pte_model(ckpt: QuantizedCheckpoint, max_seq_len: int) -> Gemma:
    """The float architecture with every quantized weight replaced by its integer module."""
    register_quant_ops()
    model = ckpt.build_model(max_seq_len)  # norms and any float weights, dequantized elsewhere
    for name, q in sorted(ckpt.quantized.items()):
        if is_vision(name):
            continue
        if name == EMBEDDING:
            model.embed_tokens = QuantEmbedding(q)
        else:
            model.set_submodule(name.removesuffix(".weight"), DynActIntLinear(q, name))
    if LM_HEAD not in ckpt.quantized and EMBEDDING in ckpt.quantized:  # tied: one table, same integers
        model.lm_head = DynActIntLinear(ckpt.quantized[EMBEDDING], LM_HEAD)
    return model.eval()


def quantized_pte_vision(ckpt: QuantizedCheckpoint) -> VisionEncoder:
    """The vision tower and projector with every quantized linear as its integer module (bias kept)."""
    register_quant_ops()
    encoder = ckpt.build_vision()
    for name, q in sorted(ckpt.quantized.items()):
        if is_vision(name):
            dotted = name.removesuffix(".weight")
            encoder.set_submodule(dotted, DynActIntLinear(q, name, encoder.get_submodule(dotted).bias))
    return encoder.eval()

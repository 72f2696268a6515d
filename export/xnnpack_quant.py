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

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge.calibration.checkpoint import QuantizedCheckpoint, fake_quantize_per_token_int8, is_vision
from gemma_edge.calibration.formats import IntGrid, QTensor, QuantFormat
from gemma_edge.calibration.recipe import EMBEDDING, LM_HEAD
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.gemma import Gemma
from gemma_edge.model.hf_checkpoint import materialize
from gemma_edge.model.swap import swap_modules
from gemma_edge.model.vision import VisionConfig, VisionEncoder

from .lowering import Lowering, lowering_for


def register_quant_ops() -> None:
    import torch.ao.quantization.fx._decomposed  # noqa: F401  quantized_decomposed.* (de)quantize ops
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  embedding_byte / 4bit


def _symmetric_int(f: QuantFormat) -> bool:
    return isinstance(f, IntGrid) and f.symmetric


def _xnnpack_weights(f: QuantFormat) -> bool:
    """XNNPACK's dynamically quantized GEMMs: qc4w, qb4w (blocks of a multiple of 32) and qc8w; its lowering
    asserts on anything else ("Only 4b group quantization is supported", "group_size to be a multiple of 32")."""
    return _symmetric_int(f) and (f.block is None or (f.bits == 4 and f.block % 32 == 0))


def _check_supported(name: str, q: QTensor, table: list[Lowering]) -> type[nn.Module]:
    """The module `table` lowers the weight `name` to; refused for a format or scales XNNPACK cannot take."""
    module = lowering_for(table, q.fmt, f"{name}: format {q.fmt.name} has no XNNPACK kernel in ExecuTorch; use a "
                                        "symmetric int4/int8 recipe for .pte (fp8 exports to ONNX)")
    if q.scale is not None and (q.scale < 0).any():
        raise GemmaEdgeError(f"{name}: {int((q.scale < 0).sum())} blocks have negative scales (a Q4_0 grid import "
                             "keeps llama.cpp's signed scales) and XNNPACK accepts only positive ones; export this "
                             "checkpoint to ONNX, or make a .pte from `gemma-edge quantize` of the same weights")
    return module


class DynActIntLinear(nn.Module):
    """int8 per-token activations x symmetric int4/int8 weights (per channel or per block), float bias."""

    def __init__(self, q: QTensor, name: str, bias: torch.Tensor | None = None):
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
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


def row_slices(rows: int, parts: int) -> list[slice]:
    """`parts` consecutive slices of `rows` (the last may be shorter): `SplitHead`'s."""
    step = -(-rows // parts)
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


class SplitHead(nn.Module):
    """The LM head as `DynActIntLinear`s over consecutive row slices, their logits concatenated: the same
    numbers (each logit is its own row's dot product, the input quantized per token alike), lowered as one
    XNNPACK delegate per slice (`export.executorch` partitions `HEAD_PARTS` one by one). XNNPACK keeps a
    delegate's unpacked weights mapped until it has packed all of them, so one head delegate held the
    whole int4 head twice while the program loaded — the peak of a `.pte`'s resident memory (docs/
    executorch.md); a slice holds 1/`parts` of it."""

    def __init__(self, q: QTensor, name: str, parts: int):
        super().__init__()
        self.parts = nn.ModuleList(integer_linear(dataclasses.replace(q, qdata=q.qdata[r], scale=q.scale[r]), name)
                                   for r in row_slices(q.qdata.shape[0], parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [part(x) for part in self.parts]
        while len(logits) > 1:  # XNNPACK concatenates at most 5 tensors at once
            logits = [torch.cat(logits[i:i + 4], dim=-1) if len(logits[i:i + 4]) > 1 else logits[i]
                      for i in range(0, len(logits), 4)]
        return logits[0]


# Buffers of `SplitHead`'s slices; the slices of the 270M's int4 head (262,144 rows) are 10 MiB each.
HEAD_PARTS = "lm_head.parts."
HEAD_SLICES = 8


class QuantEmbedding(nn.Module):
    """ExecuTorch's quantized embedding kernels over the checkpoint's integers."""

    def __init__(self, q: QTensor):
        super().__init__()
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


class TiedTableHead(DynActIntLinear):
    """The LM head over the embedding's own integer table, so that the `.pte` stores the table once.

    `embedding_4bit` reads element 2i of a row from the *high* nibble of byte i, while XNNPACK packs
    `w + 8` with element 2i in the *low* nibble (`convert_to_qc4w` in its `node_visitor.py`). Given the
    table with adjacent columns swapped, XNNPACK's bytes are the gather's bytes exactly; the head then swaps
    adjacent features of its input to match, a permutation (exact, as a linear XNNPACK takes; a block of 32
    keeps its pairs, so the scales are the table's, and per-token int8 quantization commutes with it). Both
    kernels keep an int8 table as it is (no swap). `export.executorch` keeps both uses under one key of the
    program's data file (`SHARED_TABLE`)."""

    def __init__(self, q: QTensor):
        swap = torch.arange(q.qdata.shape[1]) ^ 1 if q.fmt.bits == 4 else torch.arange(q.qdata.shape[1])
        super().__init__(dataclasses.replace(q, qdata=q.qdata[:, swap]), LM_HEAD)
        self.register_buffer("input_order", torch.eye(len(swap))[swap].contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.linear(x, self.input_order))


# Buffers holding the tied table's bytes (the gather's and `TiedTableHead`'s) and the data file that keeps
# them as one entry (ExecuTorch's named data store shares equal blobs between keys, within one file).
SHARED_TABLE = ("embed_tokens.weight_int", "lm_head.weight_int")
SHARED_TABLE_FILE = "model"  # -> model.ptd beside model.pte


LINEAR: list[Lowering] = [Lowering("symmetric int4 per channel or per block of 32k, symmetric int8 per channel",
                                   _xnnpack_weights, DynActIntLinear)]
EMBEDDING_GATHER: list[Lowering] = [Lowering("symmetric int4/int8", _symmetric_int, QuantEmbedding)]


def integer_linear(q: QTensor, name: str, bias: torch.Tensor | None = None) -> nn.Module:
    return _check_supported(name, q, LINEAR)(q, name, bias)


def quantized_pte_model(ckpt: QuantizedCheckpoint, max_seq_len: int) -> Gemma:
    """The float architecture with every quantized weight replaced by its integer module."""
    register_quant_ops()
    with torch.device("meta"):  # no float copy of the quantized weights: their modules are swapped in
        model = Gemma(ckpt.config, max_seq_len=max_seq_len)

    def replace(name: str, module: nn.Module) -> nn.Module | None:
        weight = name + ".weight"
        if weight == EMBEDDING and weight in ckpt.quantized:
            q = ckpt.quantized[weight]
            return _check_supported(weight, q, EMBEDDING_GATHER)(q)
        return integer_linear(ckpt.quantized[weight], weight) if weight in ckpt.quantized else None

    swap_modules(model, replace)
    if model.lm_head is None:  # tied in the float model
        if LM_HEAD in ckpt.quantized:  # the recipe gives the head its own format
            model.lm_head = SplitHead(ckpt.quantized[LM_HEAD], LM_HEAD, HEAD_SLICES)
        elif LM_HEAD in ckpt.floats:
            model.lm_head = nn.Linear(ckpt.config.hidden_size, ckpt.config.vocab_size, bias=False, device="meta")
        elif EMBEDDING in ckpt.quantized:  # one table, same integers, stored once
            q = ckpt.quantized[EMBEDDING]
            _check_supported(LM_HEAD, q, LINEAR)
            model.lm_head = TiedTableHead(q)
    return materialize(model, ckpt.floats).eval()


def quantized_pte_vision(ckpt: QuantizedCheckpoint) -> VisionEncoder:
    """The vision tower and projector with every quantized linear as its integer module (bias kept)."""
    register_quant_ops()
    config = VisionConfig.from_hf_dict(ckpt.multimodal_config or {})
    if config is None:
        raise GemmaEdgeError("this quantized checkpoint carries no vision tower; quantize the multimodal "
                             "(4B+) HF folder to get one")
    with torch.device("meta"):  # as for the decoder: no float copy of the quantized weights
        encoder = VisionEncoder(config)
    swap_modules(encoder, lambda name, module: integer_linear(ckpt.quantized[name + ".weight"], name + ".weight",
                                                              ckpt.floats.get(name + ".bias"))
                 if name + ".weight" in ckpt.quantized else None)
    return materialize(encoder, {k: v for k, v in ckpt.floats.items() if is_vision(k)}).eval()

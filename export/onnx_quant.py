"""What each weight format becomes in the ONNX graph: one table per use (linear, embedding gather, tied head).

int4 grids and symmetric int8 blocks → `MatMulNBits` (the checkpoint's integers offset by 8 / 128, int4 two
per byte low nibble first, its bf16 scales as float32; float activations, or on the speed path
accuracy_level 4: int8 activations per block of the weight); symmetric int8 per channel and
fp8 → `DequantizeLinear` + MatMul.
The embedding is a Gather of the same integers (+ dequantize), and a tied LM head reads the very tensors
the Gather reads, so the table is stored once. A format missing from a table has no ONNX export.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx_ir as ir
import torch

from gemma_edge.calibration.formats import Fp8E4M3, IntGrid, QTensor, QuantFormat, pack_int4
from gemma_edge.calibration.recipe import EMBEDDING

from .lowering import Lowering, lowering_for

if TYPE_CHECKING:
    from .onnx import GraphBuilder


def _int(bits: int, block: bool | None = None, symmetric: bool | None = None) -> Callable[[QuantFormat], bool]:
    """Accepts IntGrid formats of `bits` (per block when `block`, per channel when False; `symmetric` likewise)."""
    return lambda f: (isinstance(f, IntGrid) and f.bits == bits and (block is None or (f.block is not None) == block)
                      and (symmetric is None or f.symmetric == symmetric))


def _fp8(f: QuantFormat) -> bool:
    return isinstance(f, Fp8E4M3)


# ---- packing ------------------------------------------------------------------------------------

def nbits(b: GraphBuilder, name: str, q: QTensor) -> tuple[ir.Value, ir.Value, int]:
    """An int4 or int8 QTensor in MatMulNBits layout: packed [N, K / block, block * bits / 8], scales
    [N * K / block]. Symmetric integers are stored offset by 2^(bits - 1), int4 two per byte low nibble first.

    MatMulNBits takes power-of-two blocks of at least 16; a per-channel scale over a K that is not one
    (640 in the 270M) is repeated over 128-wide blocks. Integers and scale values are unchanged."""
    n, k = q.shape
    block, scale = q.fmt.block or k, q.scale.float()
    if block & (block - 1) or block < 16:
        block = math.gcd(k, 128)
        scale = scale.repeat_interleave(k // block // scale.shape[1], dim=1)
    if q.fmt.bits == 4:
        packed = pack_int4(q.qdata, signed=q.fmt.symmetric)  # symmetric: + 8; asymmetric: already 0..15
    else:
        packed = (q.qdata.to(torch.int16) + 128).to(torch.uint8)  # symmetric int8 (the table admits no other)
    packed = b.init(name + ".nbits", packed.reshape(n, k // block, block * q.fmt.bits // 8))
    return packed, b.init(name + ".nbits_scale", scale.reshape(-1)), block


def dequantized_table(b: GraphBuilder, q: QTensor) -> ir.Value:
    """A per-row-scaled embedding (fp8, int8 per channel) dequantized, built once and shared by the Gather
    and the tied head."""
    if "dequantized_table" not in b._consts:
        b._consts["dequantized_table"] = b.op(
            "DequantizeLinear", b.init(EMBEDDING + ".qdata", q.qdata),
            b.init(EMBEDDING + ".scale_flat", q.scale.float().reshape(-1)), axis=0)
    return b._consts["dequantized_table"]


# ---- linears: x @ W.T ---------------------------------------------------------------------------

def matmul_nbits(b: GraphBuilder, x: ir.Value, name: str, q: QTensor) -> ir.Value:
    n, k = q.shape
    packed, scale, block = nbits(b, name, q)
    inputs = [x, packed, scale]
    if q.zero_point is not None:
        zp = q.zero_point.to(torch.uint8).repeat_interleave(k // block // q.zero_point.shape[1], dim=1)
        zp = torch.nn.functional.pad(zp, (0, zp.shape[1] % 2))
        inputs.append(b.init(name + ".nbits_zp", zp[:, 0::2] | (zp[:, 1::2] << 4)))
    if b.w.int8_activations:
        b.w.nbits_blocks[name] = block
    return b.op("MatMulNBits", *inputs, domain="com.microsoft", K=k, N=n, bits=q.fmt.bits, block_size=block,
                accuracy_level=4 if b.w.int8_activations else 0)


def dequantize_matmul(b: GraphBuilder, x: ir.Value, name: str, q: QTensor) -> ir.Value:
    data = q.qdata.t().contiguous()  # [in, out]: per-output-channel scales on axis 1
    scale = q.scale.float().reshape(q.shape[0])
    deq = b.op("DequantizeLinear", b.init(name + ".qdata.T", data), b.init(name + ".scale", scale), axis=1)
    return b.op("MatMul", x, deq)


LINEAR: list[Lowering] = [
    Lowering("int4 per block or per channel", _int(4), matmul_nbits),
    Lowering("symmetric int8 per block", _int(8, block=True, symmetric=True), matmul_nbits),
    Lowering("symmetric int8 per channel", _int(8, block=False, symmetric=True), dequantize_matmul),
    Lowering("fp8_e4m3", _fp8, dequantize_matmul),
]


# ---- the embedding gather -----------------------------------------------------------------------

def _grouped_rows(b: GraphBuilder, values: ir.Value, scales: ir.Value, hidden: int, block: int) -> ir.Value:
    """Gathered integer rows [B, S, hidden] times their gathered scales [B, S, groups]."""
    grouped = b.op("Reshape", values, b.const_i64(0, 0, hidden // block, block))
    out = b.op("Mul", grouped, b.op("Unsqueeze", scales, b.const_i64(-1)))
    return b.op("Reshape", out, b.const_i64(0, 0, hidden))


def gather_int4(b: GraphBuilder, ids: ir.Value, q: QTensor) -> ir.Value:
    """The very tensors MatMulNBits reads for a tied head, viewed as rows: one copy in the file."""
    vocab, hidden = q.shape
    packed, flat_scale, block = nbits(b, EMBEDDING, q)
    table = b.op("Reshape", packed, b.const_i64(vocab, hidden // 2))
    scale_rows = b.op("Reshape", flat_scale, b.const_i64(vocab, hidden // block))
    scales = b.op("Gather", scale_rows, ids)  # [B, S, groups]
    rows = b.op("Gather", table, ids)
    lo = b.op("BitwiseAnd", rows, b.init("u8_15", np.array(15, dtype=np.uint8)))
    hi = b.op("BitShift", rows, b.init("u8_4", np.array(4, dtype=np.uint8)), direction="RIGHT")
    pairs = b.op("Concat", b.op("Unsqueeze", lo, b.const_i64(-1)), b.op("Unsqueeze", hi, b.const_i64(-1)), axis=-1)
    values = b.op("Sub", b.op("Cast", pairs, to=ir.DataType.FLOAT), b.const_f32(8.0))
    return _grouped_rows(b, values, scales, hidden, block)


def gather_int8_blocks(b: GraphBuilder, ids: ir.Value, q: QTensor) -> ir.Value:
    """Rows of the MatMulNBits tensors a tied head reads (integers + 128), so the table is stored once."""
    vocab, hidden = q.shape
    packed, flat_scale, block = nbits(b, EMBEDDING, q)
    rows = b.op("Gather", b.op("Reshape", packed, b.const_i64(vocab, hidden)), ids)
    scales = b.op("Gather", b.op("Reshape", flat_scale, b.const_i64(vocab, hidden // block)), ids)
    values = b.op("Sub", b.op("Cast", rows, to=ir.DataType.FLOAT), b.const_f32(128.0))
    return _grouped_rows(b, values, scales, hidden, block)


def gather_fp8(b: GraphBuilder, ids: ir.Value, q: QTensor) -> ir.Value:
    """ONNX Runtime's Gather takes no float8: rows of the dequantized table, which the tied head reads too."""
    return b.op("Gather", dequantized_table(b, q), ids)


def gather_int8(b: GraphBuilder, ids: ir.Value, q: QTensor) -> ir.Value:
    hidden = q.shape[1]
    block = q.fmt.block or hidden
    scales = b.op("Gather", b.init(EMBEDDING + ".scale", q.scale.float()), ids)  # [B, S, groups]
    values = b.op("Cast", b.op("Gather", b.init(EMBEDDING + ".qdata", q.qdata), ids), to=ir.DataType.FLOAT)
    return _grouped_rows(b, values, scales, hidden, block)


GATHER: list[Lowering] = [
    Lowering("symmetric int4", _int(4, symmetric=True), gather_int4),
    Lowering("symmetric int8 per block", _int(8, block=True, symmetric=True), gather_int8_blocks),
    Lowering("fp8_e4m3", _fp8, gather_fp8),
    Lowering("symmetric int8", _int(8, symmetric=True), gather_int8),
]


# ---- the LM head tied to a quantized embedding ------------------------------------------------

def tied_nbits(b: GraphBuilder, x: ir.Value, q: QTensor) -> ir.Value:
    return matmul_nbits(b, x, EMBEDDING, q)  # the same packed bytes and scales as the Gather


def tied_dequantized(b: GraphBuilder, x: ir.Value, q: QTensor) -> ir.Value:
    return b.gemm_head(x, dequantized_table(b, q))


TIED_HEAD: list[Lowering] = [
    Lowering("int4", _int(4), tied_nbits),
    Lowering("symmetric int8 per block", _int(8, block=True, symmetric=True), tied_nbits),
    Lowering("fp8_e4m3", _fp8, tied_dequantized),
    Lowering("int8 per channel", _int(8, block=False), tied_dequantized),
]


def lowering(table: list[Lowering], name: str, q: QTensor) -> Callable:
    """The handler `table` has for the weight `name`'s format; else one line naming what the table takes."""
    return lowering_for(table, q.fmt, f"{name}: format {q.fmt.name} has no ONNX export; choose another recipe")

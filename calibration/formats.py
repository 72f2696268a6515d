"""Weight formats: quantize -> (ints, scales[, zero points]), dequantize, and fake-quantize with an STE.

One mechanism covers the integer grids: a weight [out, in] is viewed as [out, groups, group_size], where a
group is a block of `block` input features or the whole row (per-channel). Every scale is rounded to a
bfloat16-representable value: XNNPACK keeps blockwise scales in bf16, so scales that are already bf16 make
ExecuTorch and ONNX (float32 scales) compute with exactly the same numbers.

FP8 e4m3 uses a per-channel scale. SFP8 (switched floating point, gemma.cpp's `SfpStream`) is a scale-free
8-bit storage format for |w| <= 1.875: sign + 7 bits, 4 exponent / 3 mantissa bits at or above 2^-7 and
5 exponent / 2 mantissa bits below; -0 is reserved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from gemma_edge.model.errors import GemmaEdgeError

_KINDS = ("int4", "int8", "fp8_e4m3", "sfp8")
FP8_MAX = 448.0
SFP8_MAX = 1.875


@dataclass(frozen=True)
class QuantFormat:
    """`kind` in int4 / int8 / fp8_e4m3 / sfp8; `block` None means per output channel."""

    kind: str
    block: int | None = None
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise GemmaEdgeError(f"unknown weight format kind {self.kind!r}; expected one of {', '.join(_KINDS)}")
        if self.block is not None and (self.kind not in ("int4", "int8") or self.block < 1):
            raise GemmaEdgeError(f"block size {self.block} is only valid for int4/int8 formats")
        if not self.symmetric and self.kind not in ("int4", "int8"):
            raise GemmaEdgeError(f"{self.kind} is symmetric only")

    @property
    def name(self) -> str:
        if self.kind in ("fp8_e4m3", "sfp8"):
            return self.kind
        group = f"block{self.block}" if self.block else "channel"
        return f"{self.kind}_{group}" + ("" if self.symmetric else "_asym")

    @classmethod
    def parse(cls, name: str) -> "QuantFormat":
        """'int4_block32', 'int4_block64_asym', 'int4_channel', 'int8_channel', 'fp8_e4m3', 'sfp8'."""
        if name in ("fp8_e4m3", "sfp8"):
            return cls(name)
        m = re.fullmatch(r"(int4|int8)_(channel|block(\d+))(_asym)?", name)
        if not m:
            raise GemmaEdgeError(f"unknown weight format {name!r}; expected e.g. int4_block32, int4_channel, "
                                 "int8_channel, int4_block64_asym, fp8_e4m3 or sfp8")
        return cls(m.group(1), int(m.group(3)) if m.group(3) else None, m.group(4) is None)

    @property
    def bits(self) -> int:
        return 4 if self.kind == "int4" else 8

    @property
    def qrange(self) -> tuple[int, int]:
        if self.kind not in ("int4", "int8"):
            raise ValueError(self.kind)
        if self.symmetric:
            return (-8, 7) if self.kind == "int4" else (-128, 127)
        return (0, 15) if self.kind == "int4" else (0, 255)


@dataclass
class QTensor:
    """A quantized weight. `qdata` holds one integer (int8 dtype) / fp8 value / SFP8 code per weight, in the
    weight's shape; `scale` and `zero_point` are [out, groups]."""

    fmt: QuantFormat
    qdata: torch.Tensor
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.qdata.shape)

    def dequantize(self) -> torch.Tensor:
        if self.fmt.kind == "sfp8":
            return sfp8_decode(self.qdata)
        if self.fmt.kind == "fp8_e4m3":
            return self.qdata.float() * self.scale
        g = _grouped(self.qdata.float(), self.fmt)
        zp = 0.0 if self.zero_point is None else self.zero_point.float()[..., None]
        return ((g - zp) * self.scale[..., None]).reshape(self.shape)

    def storage_bytes(self) -> int:
        n = self.qdata.numel() * self.fmt.bits // 8
        for t in (self.scale, self.zero_point):
            n += 0 if t is None else t.numel() * (2 if t.is_floating_point() else 1)  # scales stored as bf16
        return n


def _group_size(shape: tuple[int, ...], fmt: QuantFormat, name: str = "weight") -> int:
    cols = shape[-1]
    if fmt.block is None:
        return cols
    if cols % fmt.block:
        raise GemmaEdgeError(f"{name} has {cols} input features, not a multiple of block {fmt.block}; "
                             f"use a block that divides {cols} or a per-channel format")
    return fmt.block


def _grouped(w: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    size = _group_size(tuple(w.shape), fmt)
    return w.reshape(w.shape[0], w.shape[1] // size, size)


def check_finite(w: torch.Tensor, name: str) -> None:
    if not torch.isfinite(w).all():
        bad = (~torch.isfinite(w)).nonzero()[0].tolist()
        raise GemmaEdgeError(f"{name} contains NaN or Inf (first at index {bad}); the checkpoint is corrupt")


def to_bf16_grid(x: torch.Tensor) -> torch.Tensor:
    """The smallest bf16 value >= x: rounding a scale up keeps the whole clip range on the grid."""
    b = x.to(torch.bfloat16)
    b = torch.where(b.float() < x, torch.nextafter(b, torch.full_like(b, float("inf"))), b)
    return b.float()


def compute_qparams(w: torch.Tensor, fmt: QuantFormat, ratio: torch.Tensor | float = 1.0):
    """Scales (and zero points) for clip `ratio` of each group's range; ratio broadcasts over [out, groups]."""
    if fmt.kind == "fp8_e4m3":
        amax = w.abs().amax(dim=1, keepdim=True) * ratio
        scale = to_bf16_grid(amax / FP8_MAX)
        return torch.where(scale > 0, scale, torch.ones_like(scale)), None
    g = _grouped(w, fmt)
    qmin, qmax = fmt.qrange
    if fmt.symmetric:
        scale = to_bf16_grid(g.abs().amax(-1) * ratio / qmax)
        return torch.where(scale > 0, scale, torch.ones_like(scale)), None
    lo = (g.amin(-1) * ratio).clamp(max=0)
    hi = (g.amax(-1) * ratio).clamp(min=0)
    scale = to_bf16_grid((hi - lo) / (qmax - qmin))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero_point.to(torch.int8 if fmt.kind == "int4" else torch.uint8)


def quantize_with(w: torch.Tensor, fmt: QuantFormat, scale: torch.Tensor | None,
                  zero_point: torch.Tensor | None = None) -> QTensor:
    """Round `w` onto the grid given by `scale`/`zero_point` (no search)."""
    if fmt.kind == "sfp8":
        return QTensor(fmt, sfp8_encode(w), None)
    if fmt.kind == "fp8_e4m3":
        q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return QTensor(fmt, q, scale)
    qmin, qmax = fmt.qrange
    zp = 0.0 if zero_point is None else zero_point.float()[..., None]
    q = torch.clamp(torch.round(_grouped(w, fmt) / scale[..., None]) + zp, qmin, qmax)
    dtype = torch.uint8 if (not fmt.symmetric and fmt.kind == "int8") else torch.int8
    return QTensor(fmt, q.reshape(w.shape).to(dtype), scale, zero_point)


def quantize(w: torch.Tensor, fmt: QuantFormat, ratio: torch.Tensor | float = 1.0, name: str = "weight") -> QTensor:
    """Min-max quantization, optionally clipped to `ratio` of the range per group."""
    check_finite(w, name)
    if w.ndim != 2:
        raise GemmaEdgeError(f"{name}: only 2-D weights are quantized, got shape {list(w.shape)}")
    _group_size(tuple(w.shape), fmt, name)
    w = w.float()
    if fmt.kind == "sfp8":
        return quantize_with(w, fmt, None)
    scale, zero_point = compute_qparams(w, fmt, ratio)
    return quantize_with(w, fmt, scale, zero_point)


def mse_clip_quantize(w: torch.Tensor, fmt: QuantFormat, importance: torch.Tensor | None = None,
                      ratios: tuple[float, ...] = tuple(1.0 - 0.025 * i for i in range(17)),
                      name: str = "weight", rows_per_chunk: int = 2048) -> QTensor:
    """Per group, the clip ratio minimising sum(importance * (w - dequant(w))^2).

    `importance` [in] weighs input features, e.g. E[x^2] of the layer's input from calibration, which
    makes the error the expected squared error of the layer's output rather than of its weights.
    Rows are searched in chunks that stay in cache (groups never span rows).
    """
    if fmt.kind == "sfp8":
        return quantize(w, fmt, name=name)
    check_finite(w, name)
    _group_size(tuple(w.shape), fmt, name)
    w = w.float()
    weights = torch.ones(w.shape[1]) if importance is None else importance.float().clamp(min=1e-12)
    best = torch.cat([_best_ratio(w[i:i + rows_per_chunk], fmt, weights, ratios)
                      for i in range(0, w.shape[0], rows_per_chunk)])
    return quantize_with(w, fmt, *compute_qparams(w, fmt, best))


def _clip_error(w: torch.Tensor, fmt: QuantFormat, weights: torch.Tensor, r: float) -> torch.Tensor:
    """Weighted squared error per group [out, groups] at clip ratio r."""
    if fmt.kind in ("int4", "int8") and fmt.symmetric:  # the common case, without the integer round trip
        g = _grouped(w, fmt)
        qmin, qmax = fmt.qrange
        scale = compute_qparams(w, fmt, r)[0][..., None]
        err = torch.round(g / scale).clamp_(qmin, qmax).mul_(scale).sub_(g)
        return err.pow_(2).mul_(weights.reshape(1, -1, g.shape[-1])).sum(-1)
    err = (w - quantize_with(w, fmt, *compute_qparams(w, fmt, r)).dequantize()).pow_(2).mul_(weights)
    return err.sum(1, keepdim=True) if fmt.block is None else _grouped(err, fmt).sum(-1)


def _best_ratio(w: torch.Tensor, fmt: QuantFormat, weights: torch.Tensor, ratios: tuple[float, ...]) -> torch.Tensor:
    best_err = best_ratio = None
    for r in ratios:
        err = _clip_error(w, fmt, weights, r)
        if best_err is None:
            best_err, best_ratio = err, torch.full_like(err, r)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ratio = torch.where(better, torch.full_like(err, r), best_ratio)
    return best_ratio


# ---- fake quantization (QAT) -------------------------------------------------------------------

def fake_quantize(w: torch.Tensor, fmt: QuantFormat, scale: torch.Tensor,
                  zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """dequant(quant(w)) with gradients: w gets the straight-through gradient inside the clip range and
    none outside it; `scale` gets the LSQ gradient (round treated as identity)."""
    if fmt.kind == "fp8_e4m3":
        x = (w / scale).clamp(-FP8_MAX, FP8_MAX)
        return (x + (x.to(torch.float8_e4m3fn).float() - x).detach()) * scale
    if fmt.kind == "sfp8":
        return w + (sfp8_decode(sfp8_encode(w.detach())) - w).detach()
    zp = 0.0 if zero_point is None else zero_point.float()[..., None]
    return _FakeQuantInt.apply(_grouped(w, fmt), scale[..., None], zp, *fmt.qrange).reshape(w.shape)


class _FakeQuantInt(torch.autograd.Function):
    """Integer fake-quant as one autograd node: the values and gradients of writing it op by op (round with
    a straight-through gradient, then clamp), with fewer passes over memory; QAT runs it on every weight,
    every step (tests/test_qat.py compares the two)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | float, qmin: int, qmax: int):
        x = g / scale
        r = torch.round(x) + zp
        q = r.clamp(qmin, qmax) - zp
        ctx.save_for_backward(x, r, scale)
        ctx.zp, ctx.qrange = zp, (qmin, qmax)
        return q * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, r, scale = ctx.saved_tensors
        qmin, qmax = ctx.qrange
        inside = (r >= qmin) & (r <= qmax)
        grad_g = grad * inside if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:  # LSQ: d(q*s)/ds = q - x inside the range, the clip level outside
            q = r.clamp(qmin, qmax) - ctx.zp
            grad_s = (grad * torch.where(inside, q - x, q)).sum(-1, keepdim=True)
        return grad_g, grad_s, None, None, None


# ---- int4 packing for storage ------------------------------------------------------------------

def pack_int4(q: torch.Tensor, signed: bool) -> torch.Tensor:
    """Two 4-bit values per byte, low nibble first; signed values are stored offset by 8."""
    u = (q.to(torch.int16) + (8 if signed else 0)).to(torch.uint8)
    if u.shape[-1] % 2:
        raise GemmaEdgeError(f"cannot pack an odd number of int4 columns ({u.shape[-1]})")
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, signed: bool) -> torch.Tensor:
    lo, hi = packed & 0x0F, packed >> 4
    u = torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2).to(torch.int16)
    return (u - 8 if signed else u).to(torch.int8)


# ---- SFP8 (gemma.cpp) --------------------------------------------------------------------------

def _sfp8_table() -> torch.Tensor:
    values = torch.zeros(256, dtype=torch.float64)
    for code in range(256):
        if code in (0, 0x80):
            continue
        c = code & 0x7F
        large = c >= 64
        m_bits = 3 if large else 2
        m, e = c & ((1 << m_bits) - 1), c >> m_bits
        v = 2.0 ** (e - (15 if large else 23)) * (1 + m / 2 ** m_bits)
        values[code] = -v if code & 0x80 else v
    return values.float()


SFP8_VALUES = _sfp8_table()


def sfp8_decode(codes: torch.Tensor) -> torch.Tensor:
    return SFP8_VALUES[codes.long()]


def sfp8_encode(w: torch.Tensor) -> torch.Tensor:
    """gemma.cpp's SFP8FromF32: round-to-nearest-even on the mantissa, switching at 2^-7."""
    w = w.float()
    if w.abs().max() > SFP8_MAX:
        raise GemmaEdgeError(f"SFP8 stores magnitudes up to {SFP8_MAX}; this tensor reaches "
                             f"{w.abs().max().item():.4g} — use fp8_e4m3 (which has a scale) instead")
    bits = w.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    sign = (bits >> 24) & 0x80
    b = bits & 0x7FFFFFFF
    f = w.abs()
    m_bits = torch.where(f >= 0.007568359375, 3, 2)
    m32 = b & 0x7FFFFF
    is_odd = (m32 >> (23 - m_bits)) & 1
    rounded = b + is_odd + (1 << (22 - m_bits)) - 1
    large = f >= 0.00732421875
    m_bits = torch.where(large, 3, 2)
    m = (rounded & 0x7FFFFF) >> (23 - m_bits)
    e = (rounded >> 23) - 127
    m = torch.where((e == -23) & (m == 0), torch.ones_like(m), m)
    e_sfp = e + torch.where(large, 15, 23)
    code = (e_sfp << m_bits) | m | sign
    return torch.where(e < -23, torch.zeros_like(code), code).to(torch.uint8)

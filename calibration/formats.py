"""Weight formats as types: each owns its scales, quantize, dequantize, fake-quantize, storage packing and bytes.

`IntGrid(bits, block, symmetric)` covers the integer grids: a weight [out, in] is viewed as [out, groups,
group_size], where a group is a block of `block` input features or the whole row (per-channel). Every
scale is rounded to a bfloat16-representable value: XNNPACK keeps blockwise scales in bf16, so scales that
are already bf16 make ExecuTorch and ONNX (float32 scales) compute with exactly the same numbers.

`Fp8E4M3` uses a per-channel scale. `Sfp8` (switched floating point, gemma.cpp's `SfpStream`) is a
scale-free 8-bit storage format for |w| <= 1.875: sign + 7 bits, 4 exponent / 3 mantissa bits at or above
2^-7 and 5 exponent / 2 mantissa bits below; -0 is reserved.

A new format is one subclass registered with `@register_format` (its name parser and its arithmetic); the
backends say which formats they lower in their own tables (`export/onnx_quant.py`, `export/xnnpack_quant.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.hf_checkpoint import all_finite

FP8_MAX = 448.0
SFP8_MAX = 1.875

Qparams = tuple["torch.Tensor | None", "torch.Tensor | None"]  # (scale [out, groups], zero point or None)


class QuantFormat:
    """A weight format. Subclasses are frozen dataclasses; `kind` names the family (int4, fp8_e4m3, ...),
    `block` is None for one scale per output channel."""

    kind: ClassVar[str]
    examples: ClassVar[tuple[str, ...]] = ()
    block: int | None = None
    symmetric: bool = True
    searched: ClassVar[bool] = True  # has a scale whose clip ratio the MSE search can choose

    @property
    def name(self) -> str:
        return self.kind

    @property
    def bits(self) -> int:
        return 8

    @classmethod
    def parse(cls, name: str) -> "QuantFormat":
        """'int4_block32', 'int4_block64_asym', 'int4_channel', 'int8_channel', 'fp8_e4m3', 'sfp8', ..."""
        for parser in _PARSERS:
            fmt = parser(name)
            if fmt is not None:
                return fmt
        examples = [e for p in _FORMAT_TYPES for e in p.examples]
        raise GemmaEdgeError(f"unknown weight format {name!r}; expected e.g. {', '.join(examples[:-1])} "
                             f"or {examples[-1]}")

    @classmethod
    def from_name(cls, name: str) -> "QuantFormat | None":
        """This type's instance for `name`, None when the name is another type's."""
        return cls() if name == cls.kind else None

    # ---- arithmetic --------------------------------------------------------------------------------
    def group_size(self, shape: tuple[int, ...], name: str = "weight") -> int:
        cols = shape[-1]
        if self.block is None:
            return cols
        if cols % self.block:
            raise GemmaEdgeError(f"{name} has {cols} input features, not a multiple of block {self.block}; "
                                 f"use a block that divides {cols} or a per-channel format")
        return self.block

    def grouped(self, w: torch.Tensor) -> torch.Tensor:
        size = self.group_size(tuple(w.shape))
        return w.reshape(w.shape[0], w.shape[1] // size, size)

    def qparams(self, w: torch.Tensor, ratio: torch.Tensor | float = 1.0) -> Qparams:
        """Scales (and zero points) for clip `ratio` of each group's range; ratio broadcasts over [out, groups]."""
        return None, None

    def quantize_with(self, w: torch.Tensor, scale: torch.Tensor | None,
                      zero_point: torch.Tensor | None = None) -> "QTensor":
        """Round `w` onto the grid given by `scale`/`zero_point` (no search)."""
        raise NotImplementedError

    def dequantize(self, q: "QTensor") -> torch.Tensor:
        raise NotImplementedError

    def fake_quantize(self, w: torch.Tensor, scale: torch.Tensor | None,
                      zero_point: torch.Tensor | None = None) -> torch.Tensor:
        """dequant(quant(w)) with gradients (straight-through; LSQ for the scale where there is one)."""
        raise NotImplementedError

    def clip_error(self, w: torch.Tensor, weights: torch.Tensor, r: float) -> torch.Tensor:
        """Weighted squared error per group [out, groups] at clip ratio r."""
        err = (w - self.quantize_with(w, *self.qparams(w, r)).dequantize()).pow_(2).mul_(weights)
        return err.sum(1, keepdim=True) if self.block is None else self.grouped(err).sum(-1)

    # ---- storage -----------------------------------------------------------------------------------
    def pack(self, qdata: torch.Tensor) -> torch.Tensor:
        """`qdata` as stored in a QuantizedCheckpoint."""
        return qdata

    def unpack(self, stored: torch.Tensor) -> torch.Tensor:
        return stored

    def storage_bytes(self, q: "QTensor") -> int:
        n = q.qdata.numel() * self.bits // 8
        for t in (q.scale, q.zero_point):
            n += 0 if t is None else t.numel() * (2 if t.is_floating_point() else 1)  # scales stored as bf16
        return n


_FORMAT_TYPES: list[type[QuantFormat]] = []
_PARSERS: list[Callable[[str], "QuantFormat | None"]] = []


def register_format(cls: type[QuantFormat]) -> type[QuantFormat]:
    """Make `QuantFormat.parse` know the type's names."""
    _FORMAT_TYPES.append(cls)
    _PARSERS.append(cls.from_name)
    return cls


@register_format
@dataclass(frozen=True)
class IntGrid(QuantFormat):
    """Integers on a uniform grid of `bits` (4 or 8) with a scale per block of `block` inputs (None: per
    output channel); asymmetric grids add a zero point per scale."""

    bits: int = 4
    block: int | None = None
    symmetric: bool = True
    examples: ClassVar[tuple[str, ...]] = ("int4_block32", "int4_channel", "int8_channel", "int4_block64_asym")

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise GemmaEdgeError(f"integer grids have 4 or 8 bits, not {self.bits}")
        if self.block is not None and self.block < 1:
            raise GemmaEdgeError(f"block size {self.block} must be at least 1")

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"int{self.bits}"

    @property
    def name(self) -> str:
        group = f"block{self.block}" if self.block else "channel"
        return f"{self.kind}_{group}" + ("" if self.symmetric else "_asym")

    @classmethod
    def from_name(cls, name: str) -> "IntGrid | None":
        m = re.fullmatch(r"int(4|8)_(channel|block(\d+))(_asym)?", name)
        if not m:
            return None
        return cls(int(m.group(1)), int(m.group(3)) if m.group(3) else None, m.group(4) is None)

    @property
    def qrange(self) -> tuple[int, int]:
        if self.symmetric:
            return (-8, 7) if self.bits == 4 else (-128, 127)
        return (0, 15) if self.bits == 4 else (0, 255)

    def qparams(self, w: torch.Tensor, ratio: torch.Tensor | float = 1.0) -> Qparams:
        g = self.grouped(w)
        qmin, qmax = self.qrange
        if self.symmetric:
            scale = to_bf16_grid(g.abs().amax(-1) * ratio / qmax)
            return torch.where(scale > 0, scale, torch.ones_like(scale)), None
        lo = (g.amin(-1) * ratio).clamp(max=0)
        hi = (g.amax(-1) * ratio).clamp(min=0)
        scale = to_bf16_grid((hi - lo) / (qmax - qmin))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
        return scale, zero_point.to(torch.int8 if self.bits == 4 else torch.uint8)

    def quantize_with(self, w: torch.Tensor, scale: torch.Tensor | None,
                      zero_point: torch.Tensor | None = None) -> "QTensor":
        qmin, qmax = self.qrange
        zp = 0.0 if zero_point is None else zero_point.float()[..., None]
        q = torch.clamp(torch.round(self.grouped(w) / scale[..., None]) + zp, qmin, qmax)
        dtype = torch.uint8 if (not self.symmetric and self.bits == 8) else torch.int8
        return QTensor(self, q.reshape(w.shape).to(dtype), scale, zero_point)

    def dequantize(self, q: "QTensor") -> torch.Tensor:
        g = self.grouped(q.qdata.float())  # a fresh tensor, scaled in place: one float copy of the weight
        if q.zero_point is not None:
            g.sub_(q.zero_point.float()[..., None])
        return g.mul_(q.scale[..., None]).reshape(q.shape)

    def fake_quantize(self, w: torch.Tensor, scale: torch.Tensor | None,
                      zero_point: torch.Tensor | None = None) -> torch.Tensor:
        zp = 0.0 if zero_point is None else zero_point.float()[..., None]
        return _FakeQuantInt.apply(self.grouped(w), scale[..., None], zp, *self.qrange).reshape(w.shape)

    def clip_error(self, w: torch.Tensor, weights: torch.Tensor, r: float) -> torch.Tensor:
        if not self.symmetric:
            return super().clip_error(w, weights, r)
        g = self.grouped(w)  # the common case, without the integer round trip
        qmin, qmax = self.qrange
        scale = self.qparams(w, r)[0][..., None]
        err = torch.round(g / scale).clamp_(qmin, qmax).mul_(scale).sub_(g)
        return err.pow_(2).mul_(weights.reshape(1, -1, g.shape[-1])).sum(-1)

    def pack(self, qdata: torch.Tensor) -> torch.Tensor:
        return pack_int4(qdata, self.symmetric) if self.bits == 4 else qdata

    def unpack(self, stored: torch.Tensor) -> torch.Tensor:
        return unpack_int4(stored, self.symmetric) if self.bits == 4 else stored


@register_format
@dataclass(frozen=True)
class Fp8E4M3(QuantFormat):
    """float8 e4m3 values with one scale per output channel (amax / 448)."""

    kind: ClassVar[str] = "fp8_e4m3"
    examples: ClassVar[tuple[str, ...]] = ("fp8_e4m3",)

    def qparams(self, w: torch.Tensor, ratio: torch.Tensor | float = 1.0) -> Qparams:
        amax = w.abs().amax(dim=1, keepdim=True) * ratio
        scale = to_bf16_grid(amax / FP8_MAX)
        return torch.where(scale > 0, scale, torch.ones_like(scale)), None

    def quantize_with(self, w: torch.Tensor, scale: torch.Tensor | None,
                      zero_point: torch.Tensor | None = None) -> "QTensor":
        q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return QTensor(self, q, scale)

    def dequantize(self, q: "QTensor") -> torch.Tensor:
        return q.qdata.float() * q.scale

    def fake_quantize(self, w: torch.Tensor, scale: torch.Tensor | None,
                      zero_point: torch.Tensor | None = None) -> torch.Tensor:
        x = (w / scale).clamp(-FP8_MAX, FP8_MAX)
        return (x + (x.to(torch.float8_e4m3fn).float() - x).detach()) * scale


@register_format
@dataclass(frozen=True)
class Sfp8(QuantFormat):
    """gemma.cpp's switched floating point: 8-bit codes, no scale (|w| <= 1.875)."""

    kind: ClassVar[str] = "sfp8"
    examples: ClassVar[tuple[str, ...]] = ("sfp8",)
    searched: ClassVar[bool] = False

    def quantize_with(self, w: torch.Tensor, scale: torch.Tensor | None,
                      zero_point: torch.Tensor | None = None) -> "QTensor":
        return QTensor(self, sfp8_encode(w), None)

    def dequantize(self, q: "QTensor") -> torch.Tensor:
        return sfp8_decode(q.qdata)

    def fake_quantize(self, w: torch.Tensor, scale: torch.Tensor | None,
                      zero_point: torch.Tensor | None = None) -> torch.Tensor:
        return w + (sfp8_decode(sfp8_encode(w.detach())) - w).detach()


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
        return self.fmt.dequantize(self)

    def storage_bytes(self) -> int:
        return self.fmt.storage_bytes(self)

    def rows(self, index) -> "QTensor":
        """Rows `index` with their scales (every format's scales are per row)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return QTensor(self.fmt, self.qdata[index], pick(self.scale), pick(self.zero_point))


@dataclass
class StoredQTensor:
    """A QTensor as a QuantizedCheckpoint stores it (`fmt.pack`: int4 two per byte; scales in bfloat16),
    unpacked a few rows at a time by whoever reads it: the lazy reference holds half the memory of the
    unpacked integers (2.5 GB less at 4B) and of float32 scales."""

    fmt: QuantFormat
    stored: torch.Tensor
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.stored.shape[0], *self.fmt.unpack(self.stored[:1]).shape[1:])

    def rows(self, index) -> QTensor:
        picked = QTensor(self.fmt, self.stored, self.scale, self.zero_point).rows(index)  # still stored
        picked.qdata = self.fmt.unpack(picked.qdata)
        picked.scale = None if picked.scale is None else picked.scale.float()
        return picked

    def unpacked(self) -> QTensor:
        return self.rows(slice(None))

    def dequantize(self) -> torch.Tensor:
        return self.unpacked().dequantize()


def check_finite(w: torch.Tensor, name: str) -> None:
    if not all_finite(w):
        bad = (~torch.isfinite(w)).nonzero()[0].tolist()
        raise GemmaEdgeError(f"{name} contains NaN or Inf (first at index {bad}); the checkpoint is corrupt")


def to_bf16_grid(x: torch.Tensor) -> torch.Tensor:
    """The smallest bf16 value >= x: rounding a scale up keeps the whole clip range on the grid."""
    b = x.to(torch.bfloat16)
    b = torch.where(b.float() < x, torch.nextafter(b, torch.full_like(b, float("inf"))), b)
    return b.float()


def compute_qparams(w: torch.Tensor, fmt: QuantFormat, ratio: torch.Tensor | float = 1.0) -> Qparams:
    return fmt.qparams(w, ratio)


def quantize_with(w: torch.Tensor, fmt: QuantFormat, scale: torch.Tensor | None,
                  zero_point: torch.Tensor | None = None) -> QTensor:
    """Round `w` onto the grid given by `scale`/`zero_point` (no search)."""
    return fmt.quantize_with(w, scale, zero_point)


def quantize(w: torch.Tensor, fmt: QuantFormat, ratio: torch.Tensor | float = 1.0, name: str = "weight") -> QTensor:
    """Min-max quantization, optionally clipped to `ratio` of the range per group."""
    check_finite(w, name)
    if w.ndim != 2:
        raise GemmaEdgeError(f"{name}: only 2-D weights are quantized, got shape {list(w.shape)}")
    fmt.group_size(tuple(w.shape), name)
    w = w.float()
    return fmt.quantize_with(w, *fmt.qparams(w, ratio))


def mse_clip_quantize(w: torch.Tensor, fmt: QuantFormat, importance: torch.Tensor | None = None,
                      ratios: tuple[float, ...] = tuple(1.0 - 0.025 * i for i in range(17)),
                      name: str = "weight", rows_per_chunk: int = 2048) -> QTensor:
    """Per group, the clip ratio minimising sum(importance * (w - dequant(w))^2).

    `importance` [in] weighs input features, e.g. E[x^2] of the layer's input from calibration, which
    makes the error the expected squared error of the layer's output rather than of its weights.
    Rows are searched in chunks that stay in cache (groups never span rows).
    """
    if not fmt.searched:
        return quantize(w, fmt, name=name)
    check_finite(w, name)
    fmt.group_size(tuple(w.shape), name)
    w = w.float()
    weights = torch.ones(w.shape[1]) if importance is None else importance.float().clamp(min=1e-12)
    best = torch.cat([_best_ratio(w[i:i + rows_per_chunk], fmt, weights, ratios)
                      for i in range(0, w.shape[0], rows_per_chunk)])
    return fmt.quantize_with(w, *fmt.qparams(w, best))


def _best_ratio(w: torch.Tensor, fmt: QuantFormat, weights: torch.Tensor, ratios: tuple[float, ...]) -> torch.Tensor:
    best_err = best_ratio = None
    for r in ratios:
        err = fmt.clip_error(w, weights, r)
        if best_err is None:
            best_err, best_ratio = err, torch.full_like(err, r)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ratio = torch.where(better, torch.full_like(err, r), best_ratio)
    return best_ratio


# ---- fake quantization (QAT) -------------------------------------------------------------------

def fake_quantize(w: torch.Tensor, fmt: QuantFormat, scale: torch.Tensor | None,
                  zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """dequant(quant(w)) with gradients: w gets the straight-through gradient inside the clip range and
    none outside it; `scale` gets the LSQ gradient (round treated as identity)."""
    return fmt.fake_quantize(w, scale, zero_point)


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
    """Two 4-bit values per byte, low nibble first; signed values are stored offset by 8. Computed in bytes
    (uint8 arithmetic wraps, so -8..7 viewed as uint8, plus 8, is 0..15): 1.5 bytes of scratch per value
    where an int16 detour took 5 (the 4B embedding table alone is 671M values)."""
    if q.shape[-1] % 2:
        raise GemmaEdgeError(f"cannot pack an odd number of int4 columns ({q.shape[-1]})")
    u = q.to(torch.int8).view(torch.uint8) + 8 if signed else q.to(torch.uint8)
    packed = u[..., 1::2] << 4
    return packed.bitwise_or_(u[..., 0::2])


def unpack_int4(packed: torch.Tensor, signed: bool) -> torch.Tensor:
    """int8 values [..., 2 * columns] from `pack_int4`'s bytes, written straight into the result."""
    out = torch.empty(*packed.shape[:-1], packed.shape[-1], 2, dtype=torch.uint8)
    torch.bitwise_and(packed, 0x0F, out=out[..., 0])
    torch.bitwise_right_shift(packed, 4, out=out[..., 1])
    out = out.view(torch.int8).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    return out.sub_(8) if signed else out


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

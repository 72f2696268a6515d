"""Quant formats: error bounds, exact values, zeros, outliers, NaN, STE, packing, SFP8 golden values."""

import pytest
import torch

from gemma_edge.calibration.formats import (SFP8_VALUES, QuantFormat, fake_quantize, mse_clip_quantize,
                                            pack_int4, quantize, sfp8_decode, sfp8_encode, unpack_int4)
from gemma_edge.model import GemmaEdgeError

GRID_FORMATS = ["int4_channel", "int4_block32", "int4_block64", "int4_block128", "int4_block32_asym",
                "int8_channel", "int8_block32_asym"]


def _w(rows=48, cols=256, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("name", GRID_FORMATS + ["fp8_e4m3", "sfp8"])
def test_name_round_trip(name):
    assert QuantFormat.parse(name).name == name


def test_bad_format_names():
    for bad in ["int3_block32", "int4_block", "fp8", "int4_channel_asym_x"]:
        with pytest.raises(GemmaEdgeError, match="unknown weight format"):
            QuantFormat.parse(bad)


@pytest.mark.parametrize("name", GRID_FORMATS)
def test_minmax_error_is_at_most_half_a_step(name):
    fmt = QuantFormat.parse(name)
    w = _w()
    q = quantize(w, fmt)
    group = fmt.block or w.shape[1]
    step = q.scale.repeat_interleave(group, dim=1)
    # Symmetric grids are centred on 0: half a step. An asymmetric grid's zero point is rounded, which can
    # shift the range by half a step, so the extremes may be clipped by up to one step.
    bound = 0.5 if fmt.symmetric else 1.0
    assert ((q.dequantize() - w).abs() <= bound * step * (1 + 1e-5)).all()
    qmin, qmax = fmt.qrange
    assert q.qdata.min() >= qmin and q.qdata.max() <= qmax
    assert torch.equal(q.scale, q.scale.to(torch.bfloat16).float())  # scales live on the bf16 grid


def test_fp8_relative_error_bound():
    w = _w()
    q = quantize(w, QuantFormat.parse("fp8_e4m3"))
    x = w / q.scale
    normal = x.abs() >= 2 ** -6  # e4m3's smallest normal
    rel = ((q.dequantize() - w).abs() / w.abs())[normal]
    assert rel.max() <= 2 ** -4 + 1e-6  # half an ulp with 3 mantissa bits
    assert ((q.dequantize() - w).abs()[~normal] <= 2 ** -10 * q.scale.expand_as(w)[~normal]).all()


@pytest.mark.parametrize("name", ["int4_block32", "int4_channel", "int8_channel", "int4_block32_asym"])
@pytest.mark.parametrize("search", [False, True])
def test_exactly_representable_weights_survive(name, search):
    fmt = QuantFormat.parse(name)
    qmin, qmax = fmt.qrange
    gen = torch.Generator().manual_seed(1)
    ints = torch.randint(qmin, qmax + 1, (16, 128), generator=gen).float()
    group = fmt.block or 128
    ints.view(16, -1, group)[..., 0] = qmin  # every group reaches both ends, so min-max finds the grid
    ints.view(16, -1, group)[..., 1] = qmax
    scale = (torch.rand(16, 128 // group, generator=gen) * 0.01 + 0.001).to(torch.bfloat16).float()
    zp = 0 if fmt.symmetric else 8
    if fmt.symmetric:  # symmetric grids span [-qmax, qmax]
        ints = ints.clamp(-qmax, qmax)
    w = ((ints - zp).view(16, -1, group) * scale[..., None]).reshape(16, 128)
    q = mse_clip_quantize(w, fmt) if search else quantize(w, fmt)
    assert torch.equal(q.dequantize(), w)


@pytest.mark.parametrize("name", GRID_FORMATS + ["fp8_e4m3"])
def test_all_zero_rows(name):
    w = _w()
    w[3] = 0
    q = mse_clip_quantize(w, QuantFormat.parse(name))
    d = q.dequantize()
    assert torch.isfinite(d).all() and (d[3] == 0).all()


@pytest.mark.parametrize("name", ["int4_block32", "int4_channel", "int8_channel", "int4_block32_asym", "fp8_e4m3"])
def test_mse_search_never_worse_than_minmax_and_tames_outliers(name):
    fmt = QuantFormat.parse(name)
    w = _w()
    w[5, 7] = 2.0  # one outlier, 40 sigma
    err_minmax = (quantize(w, fmt).dequantize() - w).pow(2)
    err_mse = (mse_clip_quantize(w, fmt).dequantize() - w).pow(2)
    group = fmt.block or w.shape[1]
    per_group = lambda e: e.view(w.shape[0], -1, group).sum(-1)  # noqa: E731
    assert (per_group(err_mse) <= per_group(err_minmax) * (1 + 1e-6)).all()
    if fmt.kind == "int4":  # with 16 levels one outlier costs every other weight its precision
        assert err_mse.sum() < err_minmax.sum()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_rejected(value):
    w = _w()
    w[2, 9] = value
    with pytest.raises(GemmaEdgeError, match=r"layers.0.q_proj.weight contains NaN or Inf \(first at index \[2, 9\]\)"):
        quantize(w, QuantFormat.parse("int4_block32"), name="layers.0.q_proj.weight")


def test_block_must_divide_the_width():
    with pytest.raises(GemmaEdgeError, match="has 100 input features, not a multiple of block 32"):
        quantize(torch.ones(4, 100), QuantFormat.parse("int4_block32"))


def test_ste_gradients_pass_inside_the_clip_range_and_stop_outside():
    fmt = QuantFormat.parse("int4_channel")
    w = torch.tensor([[0.1, -0.3, 0.69, 0.9, -1.2]], requires_grad=True)
    scale = torch.tensor([[0.1]], requires_grad=True)  # grid covers [-0.8, 0.7]
    out = fake_quantize(w, fmt, scale)
    assert torch.allclose(out, torch.tensor([[0.1, -0.3, 0.7, 0.7, -0.8]]))
    out.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]
    assert scale.grad.abs().item() > 0  # LSQ: the scale learns


@pytest.mark.parametrize("signed", [True, False])
def test_int4_packing_round_trip(signed):
    lo, hi = (-8, 8) if signed else (0, 16)
    q = torch.randint(lo, hi, (6, 64), dtype=torch.int8)
    packed = pack_int4(q, signed)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 32)
    assert torch.equal(unpack_int4(packed, signed), q)


def test_int4_packing_layout_by_hand():
    """Low nibble first, signed values offset by 8: (-8, 7) -> 0 | 15 << 4, (0, -1) -> 8 | 7 << 4."""
    packed = pack_int4(torch.tensor([[-8, 7, 0, -1]], dtype=torch.int8), signed=True)
    assert packed.tolist() == [[0xF0, 0x78]]
    assert unpack_int4(torch.tensor([[0x0F, 0x21]], dtype=torch.uint8), signed=False).tolist() == [[15, 0, 1, 2]]


# gemma.cpp compression/sfp_test.cc, TestGolden: (input, decoded output)
SFP8_GOLDEN = [(0.46875, 0.46875), (0.9375, 0.9375), (0.484375, 0.5), (0.96875, 1.0), (0.28125, 0.28125),
               (0.5625, 0.5625), (0.296875, 0.3125), (0.59375, 0.625), (0.279296875, 0.28125),
               (0.55859375, 0.5625), (0.265625, 0.25), (0.53125, 0.5), (0.0068359375, 0.0068359375),
               (0.00732421875, 0.0078125), (0.007568359375, 0.0078125), (1.0, 1.0), (1.0625, 1.0),
               (2.384185791015625e-7, 2.384185791015625e-7), (1.49011611938e-07, 1.49011611938e-07),
               (1.19209289551e-07, 1.49011611938e-07), (5.96046447754e-08, 0.0), (8.94069671631e-08, 0.0),
               (1.11758708954e-07, 1.49011611938e-07), (0.013841, 0.013671875)]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sfp8_matches_gemma_cpp_golden_values(sign):
    x = torch.tensor([g[0] for g in SFP8_GOLDEN]) * sign
    expected = torch.tensor([g[1] for g in SFP8_GOLDEN]) * sign
    assert torch.equal(sfp8_decode(sfp8_encode(x)), expected)


def test_sfp8_code_table():
    codes = torch.tensor([c for c in range(256) if c != 0x80], dtype=torch.uint8)
    values = sfp8_decode(codes)
    assert len(set(values.tolist())) == 255  # every code distinct; -0 reserved
    assert torch.equal(sfp8_encode(values), codes)
    assert SFP8_VALUES.abs().max() == 1.875
    assert SFP8_VALUES[64] == 2 ** -7 and SFP8_VALUES[63] == 1.75 * 2 ** -8  # the switch at 2^-7


def test_sfp8_refuses_large_magnitudes():
    with pytest.raises(GemmaEdgeError, match="SFP8 stores magnitudes up to 1.875"):
        quantize(torch.full((2, 4), 2.5), QuantFormat.parse("sfp8"))

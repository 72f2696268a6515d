"""GPTQ rounding: exact where it must equal nearest rounding, lower output error where inputs correlate,
and the recipe / pipeline / CLI path on a tiny model."""

import json

import pytest
import torch

from gemma_edge.calibration.formats import QuantFormat, quantize_with
from gemma_edge.calibration.gptq import gptq
from gemma_edge.calibration.recipe import QuantRecipe
from gemma_edge.cli.main import main


def _case(fmt_name: str, out: int = 24, cols: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    fmt = QuantFormat.parse(fmt_name)
    w = torch.randn(out, cols, generator=g)
    scale, zero = fmt.qparams(w)
    return w, quantize_with(w, fmt, scale, zero), g


@pytest.mark.parametrize("fmt", ["int4_block32", "int4_channel", "int8_channel", "int4_block32_asym"])
def test_uncorrelated_inputs_give_nearest_rounding(fmt):
    """With H = I the inverse Hessian is diagonal: no error is fed forward, so GPTQ is nearest rounding."""
    w, init, _ = _case(fmt)
    got = gptq(w, torch.eye(w.shape[1]), init)
    assert torch.equal(got.qdata, init.qdata) and got.scale is init.scale and got.zero_point is init.zero_point


@pytest.mark.parametrize("fmt", ["int4_block32", "int4_channel", "int4_block32_asym"])
def test_correlated_inputs_lower_the_output_error_on_the_same_grid(fmt):
    """On inputs with correlated features GPTQ's integers, on the same scales, give a smaller output error
    E[|(W - Q) x|^2] = tr(E H E^T) than nearest rounding (the quantity it minimises), within the grid."""
    w, init, g = _case(fmt, cols=128)
    mix = torch.randn(128, 16, generator=g)
    x = torch.randn(4096, 16, generator=g) @ mix.T + 0.1 * torch.randn(4096, 128, generator=g)
    h = x.T @ x / len(x)
    got = gptq(w, h, init)

    def output_error(q):
        e = q.dequantize() - w
        return torch.einsum("oi,ij,oj->", e, h, e).item()

    assert output_error(got) < 0.6 * output_error(init)
    lo, hi = init.fmt.qrange
    assert lo <= got.qdata.min() and got.qdata.max() <= hi and got.qdata.dtype == init.qdata.dtype


def _textbook_gptq(w, hessian, init):
    """The reference implementation's loop on the row-major weight (columns strided), as `gptq` ran before."""
    from gemma_edge.calibration.gptq import COLUMNS, DAMP

    fmt = init.fmt
    out, cols = w.shape
    block, (qmin, qmax) = fmt.block or cols, fmt.qrange
    scale = init.scale.float()
    zero = torch.zeros_like(scale) if init.zero_point is None else init.zero_point.float()
    w, h = w.clone(), hessian.double().clone()
    h.diagonal().add_(DAMP * h.diagonal().mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    codes = torch.empty(out, cols, dtype=torch.int16)
    for i1 in range(0, cols, COLUMNS):
        i2 = min(i1 + COLUMNS, cols)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros(out, i2 - i1), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            s, z = scale[:, (i1 + i) // block], zero[:, (i1 + i) // block]
            code = torch.clamp(torch.round(w1[:, i] / s) + z, qmin, qmax)
            codes[:, i1 + i] = code.to(torch.int16)
            err = (w1[:, i] - (code - z) * s) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes


@pytest.mark.parametrize("fmt", ["int4_block32", "int4_channel", "int4_block32_asym"])
def test_the_transposed_loop_gives_the_textbook_integers(fmt):
    """`gptq` walks the transposed weight (each column contiguous: 2-3x faster on a 262,144-row head); over
    several lazy batches of columns it gives the integers of the textbook row-major loop."""
    w, init, g = _case(fmt, out=64, cols=320)
    x = torch.randn(2048, 24, generator=g) @ torch.randn(24, 320, generator=g) + 0.1 * torch.randn(2048, 320, generator=g)
    h = x.T @ x / len(x)
    got = gptq(w, h, init).qdata
    assert torch.equal(got.to(torch.int16), _textbook_gptq(w, h, init))
    assert not torch.equal(got, init.qdata)  # the error feedback moved some integers


def test_recipe_rounding_round_trips_and_is_checked(tmp_path):
    r = QuantRecipe("x", linear="int4_block32", rounding="gptq")
    r.save(tmp_path / "r.json")
    assert QuantRecipe.load(tmp_path / "r.json") == r
    assert "rounding" not in QuantRecipe("y", linear="int4_block32").to_dict()  # older recipes unchanged
    with pytest.raises(Exception, match="rounding must be one of"):
        QuantRecipe("z", linear="int4_block32", rounding="stochastic")


def test_cli_quantize_with_gptq_rounding(tmp_path, tiny_dir, capsys):
    """`--rounding gptq` re-rounds the projections and the separate head (not the lookup table), records it,
    and changes the integers against nearest rounding with the same data-free statistics; it is the integer
    presets' default; a table shared by lookup and head is rounded as that head is (the same integers and
    scales as int4-block32's separate head, from the same samples); statistics without their sequences are
    refused when gptq is asked for, and round to nearest when it is only the preset's default."""
    common = ["--samples", "2", "--seq-len", "16", "--no-cache"]
    assert main(["quantize", str(tiny_dir), "--recipe", "int4-block32", "--out", str(tmp_path / "g"),
                 "--rounding", "gptq", *common]) == 0
    assert "GPTQ rounding" in capsys.readouterr().out
    assert main(["quantize", str(tiny_dir), "--recipe", "int4-block32", "--out", str(tmp_path / "d"), *common]) == 0
    assert (tmp_path / "d" / "model.safetensors").read_bytes() == (tmp_path / "g" / "model.safetensors").read_bytes()
    assert main(["quantize", str(tiny_dir), "--recipe", "int4-block32", "--out", str(tmp_path / "n"),
                 "--rounding", "nearest", *common]) == 0
    from gemma_edge.calibration.checkpoint import QuantizedCheckpoint

    g, n = QuantizedCheckpoint.load(tmp_path / "g"), QuantizedCheckpoint.load(tmp_path / "n")
    assert g.recipe.rounding == "gptq" and json.loads((tmp_path / "g" / "recipe.json").read_text())["rounding"] == "gptq"
    rounded = {r["name"] for r in g.report if r.get("rounding") == "gptq"}
    assert "lm_head.weight" in rounded and "layers.0.mlp.down_proj.weight" in rounded
    assert "embed_tokens.weight" not in rounded
    assert torch.equal(g.quantized["embed_tokens.weight"].qdata, n.quantized["embed_tokens.weight"].qdata)
    assert not torch.equal(g.quantized["layers.0.mlp.down_proj.weight"].qdata,
                           n.quantized["layers.0.mlp.down_proj.weight"].qdata)
    assert torch.equal(g.quantized["layers.0.mlp.down_proj.weight"].scale, n.quantized["layers.0.mlp.down_proj.weight"].scale)

    assert main(["quantize", str(tiny_dir), "--recipe", "int4-block32-emb4", "--out", str(tmp_path / "e"),
                 "--rounding", "gptq", *common]) == 0
    e = QuantizedCheckpoint.load(tmp_path / "e")
    assert "lm_head.weight" not in e.quantized
    assert [r.get("rounding") for r in e.report if r["name"] == "embed_tokens.weight"] == ["gptq"]
    table, head = e.quantized["embed_tokens.weight"], g.quantized["lm_head.weight"]
    assert torch.equal(table.qdata, head.qdata) and torch.equal(table.scale, head.scale)
    assert not torch.equal(table.qdata, QuantizedCheckpoint.load(tmp_path / "n").quantized["lm_head.weight"].qdata)
    assert main(["quantize", str(tiny_dir), "--recipe", "int4-block32", "--out", str(tmp_path / "u"),
                 "--rounding", "gptq", "--unweighted"]) == 2
    assert "rounding gptq needs calibration sequences" in capsys.readouterr().err
    assert main(["quantize", str(tiny_dir), "--recipe", "int4-block32", "--out", str(tmp_path / "u"),
                 "--unweighted"]) == 0
    assert QuantizedCheckpoint.load(tmp_path / "u").recipe.rounding == "nearest"


def test_hessians_layer_by_layer_equal_one_forward_pass(tmp_path):
    """The layer-major pass (sequences side by side through one layer at a time, each layer's Hessians on disk
    when it ends) gives E[x xᵀ] of every projection's and the head's input as hooks on one ordinary forward
    pass per sequence do."""
    from gemma_edge.calibration.gptq import collect_hessians
    from gemma_edge.calibration.observers import observe_inputs
    from gemma_edge.model import load
    from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint

    model = load(write_tiny_checkpoint(tmp_path / "tiny", tiny_config())).model
    g = torch.Generator().manual_seed(0)
    seqs = [[2] + torch.randint(3, 200, (23,), generator=g).tolist() for _ in range(11)]  # batches of 8 and 3
    sums = {}
    observe_inputs(model, seqs, lambda n, x: sums.__setitem__(n, sums.get(n, 0) + x.reshape(-1, x.shape[-1]).T
                                                                @ x.reshape(-1, x.shape[-1])), progress=False)
    got = collect_hessians(model, seqs, tmp_path / "h", progress=False)
    assert sorted(got) == sorted(sums) and len(list((tmp_path / "h").iterdir())) == model.config.num_layers + 1
    for name, s in sums.items():
        torch.testing.assert_close(got[name], s / (11 * 24), rtol=1e-5, atol=1e-6)
    assert all(layer.self_attn.cache.k.shape[0] == 1 for layer in model.layers)

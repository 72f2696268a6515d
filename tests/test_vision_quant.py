"""Quantization recipes applied to the vision tower of a tiny random multimodal Gemma 3: which tensors get
which format, the checkpoint round trip, the quantized vision reference, its own loss, and the quantized
multimodal ONNX export against it."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from gemma_edge.calibration.checkpoint import QuantizedCheckpoint, is_vision
from gemma_edge.calibration.evaluate import vision_loss
from gemma_edge.calibration.ptq import quantize_model
from gemma_edge.calibration.recipe import PRESETS
from gemma_edge.export.onnx import export_onnx
from gemma_edge.model import load
from gemma_edge.model.image_processing import ImageSettings, preprocess, prompt_ids
from gemma_edge.model.loader import has_vision, load_vision
from gemma_edge.runtimes.parity import image_prompt_for, run_parity
from tiny_multimodal import photo, write_tiny_multimodal


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm-quant")
    write_tiny_multimodal(root / "ckpt")
    ckpt = quantize_model(load(root / "ckpt", max_seq_len=128), PRESETS["int4-block32"], progress=False)
    ckpt.save(root / "q")
    return root / "ckpt", root / "q", ckpt


def test_recipe_formats_of_the_vision_tower(folders):
    _, _, ckpt = folders
    formats = {r["name"]: r["format"] for r in ckpt.report if r["name"].startswith("vision_tower.encoder.layers.0.")}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert formats[f"vision_tower.encoder.layers.0.self_attn.{proj}.weight"] == "int4_block32"
    assert formats["vision_tower.encoder.layers.0.mlp.fc1.weight"] == "int4_block32"  # 32 inputs
    assert formats["vision_tower.encoder.layers.0.mlp.fc2.weight"] == "int4_channel"  # 48 inputs: 32 does not divide
    assert formats["vision_tower.encoder.layers.0.self_attn.q_proj.bias"] == "float32"
    rest = {r["name"]: r["format"] for r in ckpt.report}
    assert rest["vision_tower.embeddings.patch_embedding.weight"] == "float32"  # the convolution stays float
    assert rest["multi_modal_projector.mm_input_projection_weight"] == "float32"


def test_round_trip_and_the_quantized_vision_reference(folders):
    folder, q, ckpt = folders
    again = QuantizedCheckpoint.load(q)
    assert has_vision(q) and again.multimodal_config == json.loads((folder / "config.json").read_text())
    for name, t in ckpt.quantized.items():
        assert torch.equal(t.qdata, again.quantized[name].qdata) and torch.equal(t.scale, again.quantized[name].scale)
    # the quantized reference is the float tower with each quantized weight replaced by its dequantization
    expected = load_vision(folder)
    with torch.no_grad():
        for name, t in ckpt.quantized.items():
            if name.startswith("vision_tower."):
                expected.get_parameter(name).copy_(t.dequantize())
    pixels, _ = preprocess([photo(32, 32, 1), photo(20, 50, 2)], ImageSettings(size=32))
    with torch.no_grad():
        assert torch.equal(load_vision(q)(pixels), expected(pixels))
        assert not torch.equal(load_vision(q)(pixels), load_vision(folder)(pixels))
        # the tower alone, as stored, dequantized on call: the same features, whatever the activations
        tower = QuantizedCheckpoint.load(q, unpack=False, only=is_vision)
        assert tower.quantized and all(is_vision(name) for name in (*tower.quantized, *tower.floats))
        for activations in (None, "int8_dynamic"):
            lazy = tower.build_vision(activations=activations, lazy=True)
            assert all(p.is_meta for n, p in lazy.named_parameters() if n.endswith("proj.weight"))
            assert torch.equal(lazy(pixels), again.build_vision(activations=activations)(pixels))
    # the decoder of the checkpoint is unaffected by the vision tensors it carries
    assert load(q, max_seq_len=32).model.config.image_token_id == load(folder, max_seq_len=32).config.image_token_id


def test_vision_loss_isolates_the_tower(folders):
    folder, q, _ = folders
    loaded, float_encoder, quantized_encoder = load(folder, max_seq_len=128), load_vision(folder), load_vision(q)
    pixels, crops = preprocess([photo(32, 32, 1)], ImageSettings(size=32))
    ids = prompt_ids("see <start_of_image> and say", crops, loaded.tokenizer, float_encoder.config)
    same = vision_loss(loaded.model, float_encoder, float_encoder, ids, pixels)
    assert same["soft_token_relative_error"] == 0.0 and same["kl_to_float"] == 0.0 and same["top1_agreement"] == 1.0
    loss = vision_loss(loaded.model, float_encoder, quantized_encoder, ids, pixels)
    with torch.no_grad():
        f, g = float_encoder(pixels), quantized_encoder(pixels)
    assert loss["soft_token_relative_error"] == pytest.approx(((g - f).norm() / f.norm()).item())
    assert loss["kl_to_float"] > 0 and loss["positions"] == len(ids) - ids.index(float_encoder.config.image_token_id)


def test_quantized_multimodal_onnx_passes_parity(folders, tmp_path):
    """The int4 vision tower goes to MatMulNBits with the checkpoint's integers and matches its reference."""
    _, q, _ = folders
    out = export_onnx(q, tmp_path / "onnx", max_seq_len=128)
    vision = onnx.load(out / "vision.onnx", load_external_data=False).graph
    assert sum(n.op_type == "MatMulNBits" for n in vision.node) == 2 * 6  # 2 layers x (q, k, v, out, fc1, fc2)
    prompt = image_prompt_for(out, "<start_of_image> then <start_of_image>", [photo(30, 34, 5), photo(20, 60, 6)])
    report = run_parity(out, prompts=[("text", prompt[1][:4])], image_prompts=[prompt])
    assert report.passed, report.failures
    assert report.prompts[-1].metrics["max_abs_logit"] < 1e-4


def test_eval_reports_the_vision_loss(folders, tmp_path, capsys):
    from gemma_edge.cli.main import main

    folder, q, _ = folders
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    assert main(["eval", str(q), "--against", str(folder), "--text", str(tmp_path / "text.txt"), "--seq-len", "32",
                 "--report", str(tmp_path / "r")]) == 0
    assert "vision tower alone (1 images, 16 soft tokens)" in capsys.readouterr().out
    vision = json.loads((tmp_path / "r" / "eval.json").read_text())["vision"]
    assert vision["images_from"] == ["test card"] and 0 < vision["soft_token_relative_error"] < 0.5


def test_pte_vision_integer_modules_compute_the_int8_dynamic_reference(folders):
    """The modules the .pte lowers (the checkpoint's integers, int8 per-token inputs, float bias) compute the
    quantized vision reference built with XNNPACK's activation numerics, and not the weight-only one."""
    from gemma_edge.export.xnnpack_quant import DynActIntLinear, quantized_pte_vision

    _, q, ckpt = folders
    modules = quantized_pte_vision(ckpt)
    assert sum(isinstance(m, DynActIntLinear) for m in modules.modules()) == 2 * 6
    pixels, _ = preprocess([photo(32, 32, 1), photo(20, 50, 2)], ImageSettings(size=32))
    with torch.no_grad():
        got = modules(pixels)
        torch.testing.assert_close(got, load_vision(q, activations="int8_dynamic")(pixels), atol=1e-5, rtol=1e-5)
        assert (got - load_vision(q)(pixels)).abs().max() > 1e-4

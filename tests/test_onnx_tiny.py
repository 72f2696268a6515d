"""ONNX export on tiny random models: ONNX Runtime against the reference, fused ops, quantized formats."""

import hashlib
import json

import onnx
import pytest
import torch

from gemma_edge.calibration.ptq import quantize_model
from gemma_edge.calibration.recipe import PRESETS, QuantRecipe
from gemma_edge.export.onnx import export_onnx
from gemma_edge.model import GemmaEdgeError, ReferenceRunner, generate, load
from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint
from gemma_edge.runtimes.onnx_runner import OnnxRunner
from gemma_edge.runtimes.parity import reference_logits, runner_logits

W = 8
TOKENS = list(range(10, 50))  # 40 tokens: five times the window


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    ckpt = write_tiny_checkpoint(root / "tiny", tiny_config(sliding_window=W, num_kv_heads=2, hidden_size=128,
                                                            intermediate_size=256))
    return root, ckpt, load(ckpt, max_seq_len=64)


@pytest.fixture(scope="module")
def float_export(tiny):
    root, ckpt, _ = tiny
    return export_onnx(ckpt, root / "f32", max_seq_len=64)


@pytest.mark.parametrize("prefill", [1, 5, 20, 40])
def test_onnx_logits_equal_the_reference_across_the_window(tiny, float_export, prefill):
    """One prefill call (longer than the window for 20 and 40), then decode steps past it."""
    _, _, loaded = tiny
    runner = OnnxRunner(float_export)
    got = runner_logits(runner, TOKENS, prefill)
    torch.testing.assert_close(got, reference_logits(loaded.model, TOKENS, prefill), atol=1e-4, rtol=0)
    # a second session on the same runner starts clean
    torch.testing.assert_close(runner_logits(runner, TOKENS, prefill), got, atol=0, rtol=0)


def test_graph_uses_fused_attention_with_the_window_per_layer(tiny, float_export):
    _, _, loaded = tiny
    onnx.checker.check_model(str(float_export / "model.onnx"))
    model = onnx.load(str(float_export / "model.onnx"), load_external_data=False)
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert [n.domain for n in gqa] == ["com.microsoft"] * loaded.config.num_layers
    windows = [next(a.i for a in n.attribute if a.name == "local_window_size") for n in gqa]
    assert windows == [W if loaded.config.is_sliding(i) else -1 for i in range(loaded.config.num_layers)]
    caches = [n.input[7] for n in gqa]  # cos_cache: per layer type, as the RoPE bases differ
    assert {caches[i] for i in range(len(gqa)) if loaded.config.is_sliding(i)} == {"cos_cache_local"}
    assert {caches[i] for i in range(len(gqa)) if not loaded.config.is_sliding(i)} == {"cos_cache_global"}
    names = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    assert {"input_ids", "attention_mask", "logits", "past_key_values.0.key", "present.0.value"} <= names


ASYM = QuantRecipe("int4-block32-asym", linear="int4_block32_asym", embedding="int8_channel", lm_head="int4_block32")


@pytest.mark.parametrize("recipe", ["int4-block32", "int4-block32-emb4", "int4-channel", "fp8", ASYM.name])
def test_quantized_onnx_computes_the_quantized_reference(tiny, recipe):
    root, _, loaded = tiny
    ckpt = quantize_model(loaded, PRESETS.get(recipe, ASYM), progress=False).save(root / f"q-{recipe}")
    folder = export_onnx(ckpt, root / f"onnx-{recipe}", max_seq_len=64)
    reference = load(ckpt, max_seq_len=64).model
    got = runner_logits(OnnxRunner(folder), TOKENS, 20)
    torch.testing.assert_close(got, reference_logits(reference, TOKENS, 20), atol=2e-4, rtol=0)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    assert ("MatMulNBits" in ops) == recipe.startswith("int4")
    assert ("DequantizeLinear" in ops) == (recipe == "fp8")
    if recipe == "int4-block32-emb4":  # tied head: MatMulNBits reads the embedding's own bytes, stored once
        inits = {i.name for i in model.graph.initializer}
        assert "embed_tokens.weight.nbits" in inits and not any(n.startswith("lm_head") for n in inits)


def test_activation_quantizing_recipes_are_refused(tiny):
    root, _, loaded = tiny
    ckpt = quantize_model(loaded, PRESETS["8da4w"], progress=False).save(root / "q-8da4w")
    with pytest.raises(GemmaEdgeError, match="weight-only recipes"):
        export_onnx(ckpt, root / "onnx-8da4w")
    assert not (root / "onnx-8da4w").exists()


def test_onnxruntime_genai_generates_the_reference_tokens(tiny, float_export):
    from gemma_edge.runtimes.genai_runner import GenAIRunner

    _, _, loaded = tiny
    config = json.loads((float_export / "genai_config.json").read_text())
    assert config["model"]["eos_token_id"] == list(loaded.tokenizer.stop_ids)
    assert config["search"]["past_present_share_buffer"] is True  # GQA appends into one buffer in place
    prompt = [2] + TOKENS[:12]
    expected = generate(ReferenceRunner(loaded.model), prompt, 24, stop_ids=loaded.tokenizer.stop_ids)
    assert GenAIRunner(float_export).generate(prompt, 24) == expected


def test_two_exports_are_byte_identical(tiny, tmp_path):
    _, ckpt, _ = tiny
    digests = []
    for name in ("a", "b"):
        out = export_onnx(ckpt, tmp_path / name, max_seq_len=32)
        digests.append([hashlib.sha256((out / f).read_bytes()).hexdigest()
                        for f in ("model.onnx", "model.onnx.data", "genai_config.json", "manifest.json")])
    assert digests[0] == digests[1]


def test_cli_export_onnx_and_bench(tiny, capsys):
    from gemma_edge.cli.main import main

    root, ckpt, _ = tiny
    assert main(["export", "onnx", str(ckpt), "--out", str(root / "cli"), "--max-seq-len", "64"]) == 0
    assert "model.onnx.data" in capsys.readouterr().out
    assert main(["export", "onnx", str(ckpt), "--out", str(root / "cli")]) == 2  # exists: one-line error
    assert "already exists" in capsys.readouterr().err
    assert main(["bench", str(root / "cli"), "--prompt-len", "16", "--decode-tokens", "4", "--runs", "1", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["decode_tok_s"] > 0 and report["artifact"].endswith("model.onnx")
    sizes = sum((root / "cli" / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))
    assert report["file_mib"] == pytest.approx(sizes / 2**20)
    assert main(["bench", str(root / "cli"), "--stock", "--prompt-len", "16", "--decode-tokens", "4", "--runs", "1",
                 "--json"]) == 0  # and through onnxruntime-genai's own loop
    out = capsys.readouterr().out
    assert "through onnxruntime-genai" in out
    ours, genai = json.loads(out[out.index("["):])
    assert (ours["mode"], genai["mode"]) == ("runner", "stock")
    assert genai["decode_tok_s"] > 0 and genai["prefill_tok_s"] > 0 and genai["peak_rss_mib"] >= genai["after_load_rss_mib"]


def test_per_channel_int4_over_a_width_that_is_no_power_of_two(tmp_path):
    """MatMulNBits needs power-of-two blocks: a channel scale over K=96 or 192 (640 in the 270M) is repeated
    over 32- or 64-wide blocks, integers unchanged."""
    loaded = load(write_tiny_checkpoint(tmp_path / "t", tiny_config(num_layers=2, hidden_size=96,
                                                                     intermediate_size=192)), max_seq_len=32)
    ckpt = quantize_model(loaded, PRESETS["int4-channel"], progress=False).save(tmp_path / "q")
    folder = export_onnx(ckpt, tmp_path / "onnx", max_seq_len=32)
    got = runner_logits(OnnxRunner(folder), TOKENS[:20], 10)
    torch.testing.assert_close(got, reference_logits(load(ckpt).model, TOKENS[:20], 10), atol=2e-4, rtol=0)


def test_bench_peak_rss_is_the_measured_process_not_its_parent(float_export):
    """Peak RSS comes from the fresh process alone, even when the caller is large (quickstart is)."""
    import numpy as np

    from gemma_edge.runtimes.bench import _rss_mib, bench

    ballast = np.ones(2**31 // 8)  # 2 GiB touched in this process
    assert _rss_mib() > 2048
    report = bench(float_export, prompt_len=8, decode_tokens=2, runs=1)
    assert 0 < report["peak_rss_mib"] < 2048 and ballast[-1] == 1.0

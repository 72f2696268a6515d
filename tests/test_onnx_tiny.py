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
from gemma_edge.runtimes.genai_runner import GenAIRunner
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
    assert not any(a.name == "sliding_window_cache" for n in gqa for a in n.attribute)  # full caches by default
    caches = [n.input[7] for n in gqa]  # cos_cache: per layer type, as the RoPE bases differ
    assert {caches[i] for i in range(len(gqa)) if loaded.config.is_sliding(i)} == {"cos_cache_local"}
    assert {caches[i] for i in range(len(gqa)) if not loaded.config.is_sliding(i)} == {"cos_cache_global"}
    names = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    assert {"input_ids", "attention_mask", "logits", "past_key_values.0.key", "present.0.value"} <= names
    # the last position's logits only (genai reads the static 1 as trimmed prefill logits)
    logits = next(o for o in model.graph.output if o.name == "logits").type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in logits] == ["batch_size", 1, loaded.config.vocab_size]


@pytest.fixture(scope="module")
def windowed_export(tiny):
    root, ckpt, _ = tiny
    return export_onnx(ckpt, root / "windowed", max_seq_len=64, windowed_kv=True)


def test_windowed_kv_keeps_window_plus_16_positions_and_the_same_logits(tiny, float_export, windowed_export):
    """--windowed-kv: sliding layers' GroupQueryAttention keeps a cache of window + 16 positions (here 24 of a
    64-position context) and evicts the rest itself; genai_config names those layers. Logits stay the
    reference's with prompts of 20 and 40 tokens in one call, and after decode steps past the window."""
    _, _, loaded = tiny
    c = loaded.config
    model = onnx.load(str(windowed_export / "model.onnx"), load_external_data=False)
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    windowed = [next((a.i for a in n.attribute if a.name == "sliding_window_cache"), 0) for n in gqa]
    assert windowed == [int(c.is_sliding(i)) for i in range(c.num_layers)]
    window = json.loads((windowed_export / "genai_config.json").read_text())["model"]["decoder"]["sliding_window"]
    assert window["layers"] == [i for i in range(c.num_layers) if c.is_sliding(i)]
    assert window["window_size"] + window["cache_slack"] == W + 16
    runner = OnnxRunner(windowed_export)
    for prefill in (20, 40):
        got = runner_logits(runner, TOKENS, prefill)
        torch.testing.assert_close(got, reference_logits(loaded.model, TOKENS, prefill), atol=1e-4, rtol=0)
        shapes = {n: v.shape[2] for n, v in runner.past.items()}
        assert all(shapes[f"past_key_values.{i}.key"] == (W + 16 if c.is_sliding(i) else len(TOKENS))
                   for i in range(c.num_layers))


def test_genai_runs_a_windowed_folder_when_max_length_covers_the_cache(tiny, windowed_export):
    """genai allocates the sliding layers at min(window + 16, max_length) and the global ones at max_length;
    a max_length below the window is refused by GroupQueryAttention, so GenAIRunner asks for window + 16."""
    import onnxruntime_genai as og

    _, _, loaded = tiny
    prompt = [2] + TOKENS[:12]
    expected = generate(ReferenceRunner(loaded.model), prompt, 30, stop_ids=loaded.tokenizer.stop_ids)
    assert GenAIRunner(windowed_export).generate(prompt, 30) == expected  # 43 positions: past the 24-slot cache
    model = og.Model(str(windowed_export))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=W - 2)
    generator = og.Generator(model, params)
    with pytest.raises(Exception, match="capacity"):
        generator.append_tokens(prompt[:W - 3])


def test_windowed_kv_is_refused_where_it_cannot_save_anything(tiny):
    root, ckpt, _ = tiny
    with pytest.raises(GemmaEdgeError, match="--max-seq-len above 24"):
        export_onnx(ckpt, root / "short-windowed", max_seq_len=24, windowed_kv=True)


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


@pytest.mark.parametrize("bits,block,rows", [(4, 32, 1), (4, 32, 7), (4, 128, 3), (8, 32, 5), (4, 64, 40)])
def test_per_block_int8_inputs_are_what_matmulnbits_computes_at_accuracy_level_4(bits, block, rows):
    """The speed path's reference numerics against onnxruntime itself: one MatMulNBits node at
    accuracy_level 4 equals x quantized per block (fake_quantize_per_block_int8) times the dequantized weight
    to float rounding, and differs from float activations by far more."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from gemma_edge.calibration.checkpoint import fake_quantize_per_block_int8

    g = torch.Generator().manual_seed(bits * block + rows)
    k, n = 256, 96
    x = torch.randn(rows, k, generator=g) * torch.rand(1, k, generator=g) * 3
    q = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (n, k), generator=g)
    scale = torch.rand(n, k // block, generator=g) * 0.02 + 1e-3
    w = (q.reshape(n, k // block, block) * scale[..., None]).reshape(n, k)
    u = (q + 2 ** (bits - 1)).to(torch.uint8).reshape(n, k // block, block)
    packed = u[..., 0::2] | (u[..., 1::2] << 4) if bits == 4 else u
    node = helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
                              [numpy_helper.from_array(packed.numpy(), "b"),
                               numpy_helper.from_array(scale.reshape(-1).numpy().astype(np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    got = torch.from_numpy(ort.InferenceSession(model.SerializeToString()).run(None, {"x": x.numpy()})[0])
    simulated = fake_quantize_per_block_int8(x, block).double() @ w.double().T
    float_inputs = x.double() @ w.double().T
    err = (got.double() - simulated).abs().max().item()
    assert err < 1e-4 * float_inputs.abs().max().item()
    assert (got.double() - float_inputs).abs().max().item() > 100 * err


@pytest.mark.parametrize("recipe,head", [("int4-block32", "lm_head.weight"),
                                         ("int4-block32-emb4", "embed_tokens.weight")])
def test_the_speed_path_runs_int8_activations_and_matches_its_own_reference(tiny, recipe, head):
    """--int8-activations: every MatMulNBits at accuracy_level 4, the blocks in the manifest; the folder's
    logits follow the int8-block reference (a separate head, or one tied to the table) several times closer
    than the float-activation one. Not to float rounding everywhere: an input within float error of a .5
    boundary of its int8 grid rounds either way (tens per forward here), which moves later logits — the
    chaos parity's noise floor allows for. (A reference with the wrong block, 16 or 64, or per token is as
    far off as the float one: measured 0.032-0.045 mean against 0.006.)"""
    from gemma_edge.runtimes.parity.reference import reference_for

    root, _, loaded = tiny
    ckpt = quantize_model(loaded, PRESETS[recipe], progress=False).save(root / f"q-{recipe}-speed")
    folder = export_onnx(ckpt, root / f"onnx-{recipe}-int8-act", max_seq_len=64, int8_activations=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(next(a.i for a in n.attribute if a.name == "accuracy_level") == 4 for n in nbits)
    blocks = manifest["metadata"]["activation_blocks"]
    assert manifest["activations"] == "int8_block" and len(blocks) == len(nbits) and blocks[head] == 32
    got = runner_logits(OnnxRunner(folder), TOKENS, 20)
    int8_ref = reference_logits(reference_for(folder, ckpt).model, TOKENS, 20)
    float_ref = reference_logits(load(ckpt, max_seq_len=64).model, TOKENS, 20)
    assert 3 * (got - int8_ref).abs().mean() < (got - float_ref).abs().mean()


def test_the_speed_path_needs_matmulnbits_weights(tiny):
    root, ckpt, loaded = tiny
    fp8 = quantize_model(loaded, PRESETS["fp8"], progress=False).save(root / "q-fp8-speed")
    for source in (ckpt, fp8):
        with pytest.raises(GemmaEdgeError, match="nothing to speed up"):
            export_onnx(source, root / "speed-refused", max_seq_len=64, int8_activations=True)
        assert not (root / "speed-refused").exists()


def test_onnxruntime_genai_generates_the_reference_tokens(tiny, float_export):
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


def test_cli_export_onnx_and_bench(tiny, float_export, capsys):
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
    assert main(["bench", str(root / "cli"), str(float_export), "--stock", "--prompt-len", "16", "--decode-tokens",
                 "4", "--runs", "1", "--json"]) == 0  # two folders side by side, each through genai's own loop too
    out = capsys.readouterr().out
    assert "through onnxruntime-genai" in out
    ours, genai, other, other_genai = json.loads(out[out.index("["):])
    assert [(r["artifact"], r["mode"]) for r in (ours, genai, other, other_genai)] == [
        (str(root / "cli" / "model.onnx"), "runner"), (str(root / "cli" / "model.onnx"), "stock"),
        (str(float_export / "model.onnx"), "runner"), (str(float_export / "model.onnx"), "stock")]
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

"""Recipes, PTQ, the QuantizedCheckpoint, calibration observers and the calibration CLI (tiny models)."""

import hashlib
import json
import math

import pytest
import torch

from gemma_edge.calibration.checkpoint import (DynamicInt8Linear, QuantizedCheckpoint,
                                               fake_quantize_per_token_int8)
from gemma_edge.calibration.data import DOMAINS, held_out_domains, read_texts, sample_sequences, token_sequences
from gemma_edge.calibration.evaluate import EvalResult, chunks
from gemma_edge.calibration.observers import CalibrationStats, collect_stats
from gemma_edge.calibration.ptq import quantize_model
from gemma_edge.calibration.recipe import PRESETS, QuantRecipe
from gemma_edge.cli.main import main
from gemma_edge.model import GemmaEdgeError, ReferenceRunner, Sampling, generate, load
from gemma_edge.model.gemma import Gemma
from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint


@pytest.fixture
def tiny(tmp_path):
    """Widths divisible by 128 so every block size applies."""
    return load(write_tiny_checkpoint(tmp_path / "tiny", tiny_config(hidden_size=128, intermediate_size=256)))


def _sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_recipe_json_round_trip(tmp_path):
    r = QuantRecipe("mine", linear="int4_block64", embedding="int8_channel", lm_head="float",
                    activations="int8_dynamic", clip="minmax", overrides={"layers.0.*": "int8_channel"})
    r.save(tmp_path / "r.json")
    assert QuantRecipe.load(tmp_path / "r.json") == r
    assert QuantRecipe.load("int4-block32") is PRESETS["int4-block32"]
    (tmp_path / "bad.json").write_text(json.dumps({**r.to_dict(), "colour": "red"}))
    with pytest.raises(GemmaEdgeError, match=r"unknown keys \['colour'\]"):
        QuantRecipe.load(tmp_path / "bad.json")
    with pytest.raises(GemmaEdgeError, match="not a recipe preset"):
        QuantRecipe.load(tmp_path / "missing.json")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_tensor_gets_its_format(tiny, preset):
    recipe = PRESETS[preset]
    ckpt = quantize_model(tiny, recipe, progress=False)
    report = {r["name"]: r["format"] for r in ckpt.report}
    params = dict(tiny.model.named_parameters())
    assert set(params) <= set(report)  # nothing silently left out of the report
    for name in params:
        if name.endswith("norm.weight"):
            assert report[name] == "float32"
        elif name == "embed_tokens.weight":
            assert report[name] == recipe.embedding
        else:
            assert report[name] == recipe.linear
    separate_head = recipe.lm_head != recipe.embedding
    assert ("lm_head.weight" in report) == separate_head
    if separate_head:
        assert report["lm_head.weight"] == recipe.lm_head


def test_overrides_keep_chosen_layers_and_typos_fail(tiny):
    r = QuantRecipe("o", linear="int4_block32", overrides={"layers.1.mlp.*": "float", "layers.0.*_proj.weight": "int8_channel"})
    formats = {x["name"]: x["format"] for x in quantize_model(tiny, r, progress=False).report}
    assert formats["layers.1.mlp.up_proj.weight"] == "float32"
    assert formats["layers.0.self_attn.q_proj.weight"] == "int8_channel"
    assert formats["layers.2.self_attn.q_proj.weight"] == "int4_block32"
    typo = QuantRecipe("t", linear="int4_block32", overrides={"layers.0.atn.*": "float"})
    with pytest.raises(GemmaEdgeError, match=r"override 'layers.0.atn.\*' matches no tensor"):
        quantize_model(tiny, typo, progress=False)


def test_width_not_divisible_by_block_is_refused(tmp_path):
    loaded = load(write_tiny_checkpoint(tmp_path / "t", tiny_config(hidden_size=48, intermediate_size=96)))
    with pytest.raises(GemmaEdgeError, match=r"layers.0.mlp.gate_proj.weight has 48 input features, not a multiple of block 32"):
        quantize_model(loaded, PRESETS["int4-block32"], progress=False)


@pytest.mark.parametrize("preset", ["int4-block32", "fp8", "8da4w", "int4-block32-emb4"])
def test_reload_is_bit_identical_and_saving_is_deterministic(tiny, tmp_path, preset):
    ckpt = quantize_model(tiny, PRESETS[preset], progress=False)
    a = ckpt.save(tmp_path / "a")
    b = quantize_model(tiny, PRESETS[preset], progress=False).save(tmp_path / "b")
    assert _sha(a) == _sha(b)
    back = QuantizedCheckpoint.load(a)
    assert back.recipe == ckpt.recipe and back.config == ckpt.config
    assert set(back.quantized) == set(ckpt.quantized) and set(back.floats) == set(ckpt.floats)
    for name, q in ckpt.quantized.items():
        r = back.quantized[name]
        assert r.fmt == q.fmt
        if q.qdata.dtype == torch.float8_e4m3fn:
            assert torch.equal(r.qdata.view(torch.uint8), q.qdata.view(torch.uint8))
        else:
            assert torch.equal(r.qdata, q.qdata)
        assert torch.equal(r.scale, q.scale)


def test_quantized_reference_is_the_float_model_on_dequantized_weights(tiny, tmp_path):
    ckpt = quantize_model(tiny, PRESETS["int4-block32"], progress=False)
    folder = ckpt.save(tmp_path / "q")
    loaded = load(folder)  # the public loader opens quantized checkpoints
    manual = Gemma(tiny.config, max_seq_len=64)
    state = {k: q.dequantize() for k, q in ckpt.quantized.items()}
    state.update(ckpt.floats)
    head = state.pop("lm_head.weight")
    manual.load_state_dict(state, strict=False)
    tokens = torch.arange(3, 40)[None]
    with torch.no_grad():
        hidden = []
        manual.norm.register_forward_hook(lambda m, i, o: hidden.append(o))
        manual(tokens, torch.arange(37))
        expected = hidden[0] @ head.T
        got = loaded.model(tokens, torch.arange(37))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_8da4w_quantizes_every_linear_input(tiny):
    model = quantize_model(tiny, PRESETS["8da4w"], progress=False).build_model(64)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, DynamicInt8Linear) for m in linears)
    assert isinstance(model.lm_head, DynamicInt8Linear)
    x = torch.randn(5, 64) * 3
    dq = fake_quantize_per_token_int8(x)
    step = (x.amax(-1).clamp(min=0) - x.amin(-1).clamp(max=0)) / 255
    assert ((dq - x).abs() <= step[:, None] * 0.5 + 1e-6).all()
    assert len(torch.unique(dq[0])) <= 256


def test_nan_weights_are_refused(tiny):
    with torch.no_grad():
        tiny.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(GemmaEdgeError, match="layers.2.mlp.down_proj.weight contains NaN or Inf"):
        quantize_model(tiny, PRESETS["int4-channel"], progress=False)


def test_calibration_statistics_by_hand(tiny):
    seqs = [[2, 10, 11, 12, 13], [2, 20, 21, 22, 23]]
    stats = collect_stats(tiny.model, seqs, progress=False)
    names = {n for n, _ in tiny.model.named_parameters() if n.endswith("_proj.weight")} | {"lm_head.weight"}
    assert set(stats.layers) == names
    # The first projection's input is the first norm of the scaled embeddings: recompute it by hand.
    m = tiny.model
    x = m.layers[0].input_layernorm(m.embed_tokens(torch.tensor(seqs)) * m.embed_scale).detach()
    s = stats.layers["layers.0.self_attn.q_proj.weight"]
    torch.testing.assert_close(s.mean_sq, x.pow(2).reshape(-1, x.shape[-1]).mean(0))
    assert s.absmax == pytest.approx(x.abs().max().item())
    assert s.p99_9 <= s.p99_99 <= s.absmax and 0 <= s.outlier_ratio < 0.05


def test_stats_round_trip_and_weighted_search_changes_scales(tiny, tmp_path):
    stats = collect_stats(tiny.model, sample_sequences(tiny, 3, 16, seed=1, progress=False), progress=False)
    back = CalibrationStats.load(stats.save(tmp_path / "stats"))
    for k, s in stats.layers.items():
        assert torch.equal(back.layers[k].mean_sq, s.mean_sq) and back.layers[k].p99_9 == s.p99_9
    plain = quantize_model(tiny, PRESETS["int4-channel"], progress=False)
    weighted = quantize_model(tiny, PRESETS["int4-channel"], stats, progress=False)
    assert any(not torch.equal(plain.quantized[k].scale, weighted.quantized[k].scale) for k in plain.quantized)


def test_data_free_sampling_is_seeded(tiny):
    a = sample_sequences(tiny, 2, 12, seed=5, progress=False)
    assert a == sample_sequences(tiny, 2, 12, seed=5, progress=False)
    assert a != sample_sequences(tiny, 2, 12, seed=6, progress=False)
    assert all(len(s) == 12 and s[0] == 2 for s in a)


def test_data_free_sampling_in_batches_equals_each_sequence_alone(tiny, monkeypatch):
    """Sequences decoded side by side (3 batches of at most 4 here) are those each decodes alone with its seed,
    and the model is left at batch 1 for its next user."""
    monkeypatch.setattr("gemma_edge.calibration.data.SAMPLE_BATCH", 4)
    batched = sample_sequences(tiny, 10, 20, seed=3, progress=False, prompts=[[2]])
    alone = [[2] + generate(ReferenceRunner(tiny.model), [2], 19, Sampling(temperature=1.0, seed=3 + i))
             for i in range(10)]
    assert batched == alone and len({tuple(s) for s in batched}) == 10
    assert all(layer.self_attn.cache.k.shape[0] == 1 for layer in tiny.model.layers)


def test_data_free_sampling_starts_from_the_multilingual_requests(tiny, monkeypatch):
    """By default sequence i opens with request i mod 16 in the chat template (cut to half the sequence) and the
    model writes the rest, as it would decoding alone from that prompt; the requests span languages."""
    from gemma_edge.calibration.prompts import REQUESTS
    from gemma_edge.model.tokenizer import format_chat

    assert {"用中文写一段关于城市生活的短文。", "Schreibe einen kurzen Bericht über das Wetter in den Alpen."} <= set(REQUESTS)
    monkeypatch.setattr("gemma_edge.calibration.data.SAMPLE_BATCH", 4)
    seqs = sample_sequences(tiny, 18, 40, seed=3, progress=False)
    for i, s in enumerate(seqs):
        prompt = tiny.tokenizer.encode(format_chat([{"role": "user", "content": REQUESTS[i % 16]}]))[:20]
        alone = generate(ReferenceRunner(tiny.model), prompt, 40 - len(prompt), Sampling(temperature=1.0, seed=3 + i))
        assert s == prompt + alone
    assert all(layer.self_attn.cache.k.shape[0] == 1 for layer in tiny.model.layers)


def test_calibration_files(tmp_path, tiny):
    (tmp_path / "a.jsonl").write_text('{"text": "the cat"}\n\n{"text": "sat on the mat"}\n')
    (tmp_path / "b.txt").write_text("and then it rained " * 10)
    texts = read_texts([tmp_path / "a.jsonl", tmp_path / "b.txt"])
    assert texts[:2] == ["the cat", "sat on the mat"]
    seqs = token_sequences(texts, tiny.tokenizer, seq_len=8, max_sequences=3)
    assert len(seqs) == 3 and all(len(s) == 8 for s in seqs)
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(GemmaEdgeError, match=r"bad.jsonl:1: each JSONL line needs a \"text\" field"):
        read_texts([tmp_path / "bad.jsonl"])


def test_cli_calibrate_quantize_eval(tmp_path, tiny_dir, capsys):
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    assert main(["calibrate", str(tiny_dir), "--out", str(tmp_path / "stats"), "--calib", str(text),
                 "--seq-len", "32", "--samples", "4"]) == 0
    assert (tmp_path / "stats" / "stats.json").exists()
    assert main(["quantize", str(tiny_dir), "--recipe", "int4-channel", "--out", str(tmp_path / "q"),
                 "--stats", str(tmp_path / "stats")]) == 0
    held_out = tmp_path / "held.txt"
    held_out.write_text("she sells sea shells on the sea shore, " * 60)
    assert main(["eval", str(tmp_path / "q"), "--against", str(tiny_dir), "--text", str(held_out),
                 "--seq-len", "64", "--report", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "top-1 agreement" in out
    report = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert report["result"]["perplexity"] > 1 and 0 <= report["result"]["top1_agreement"] <= 1
    assert any(r["name"] == "lm_head.weight" for r in report["weight_errors"])
    assert (tmp_path / "report" / "weight_errors.png").read_bytes()[:4] == b"\x89PNG"


def test_quantize_weighs_by_data_free_statistics_by_default(tmp_path, tiny_dir):
    """`quantize` alone is `calibrate` (data-free: the same samples, length and seed) then `quantize --stats`,
    through the cache or not; `--unweighted` is the plain weight-error search, and it differs."""
    small = ["--seq-len", "32", "--samples", "2"]

    def weights(name: str, *extra: str) -> bytes:
        assert main(["quantize", str(tiny_dir), "--recipe", "int4-block32", "--out", str(tmp_path / name),
                     *small, *extra]) == 0
        return (tmp_path / name / "model.safetensors").read_bytes()

    assert main(["calibrate", str(tiny_dir), "--out", str(tmp_path / "stats"), *small]) == 0
    explicit = weights("q-stats", "--stats", str(tmp_path / "stats"), "--no-cache")  # rounds to nearest
    assert weights("q-default", "--no-cache", "--rounding", "nearest") == explicit
    assert weights("q-cached", "--rounding", "nearest") == explicit
    assert weights("q-plain", "--unweighted", "--no-cache") != explicit
    assert weights("q-gptq", "--no-cache") == weights("q-gptq-cached")  # the preset's default, through the cache


@pytest.mark.parametrize("argv,message", [
    (["quantize", "{tiny}", "--recipe", "int4-channel", "--out", "{out}", "--calib", "{empty}"],
     "calibration set is empty"),
    (["quantize", "{tiny}", "--recipe", "{typo_recipe}", "--out", "{out}"], "matches no tensor"),
    (["quantize", "{tiny}", "--recipe", "int9", "--out", "{out}"], "not a recipe preset"),
])
def test_cli_bad_input_leaves_no_output(tmp_path, tiny_dir, capsys, argv, message):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "typo.json").write_text(json.dumps({"name": "t", "linear": "int4_channel",
                                                    "overrides": {"layers.0.self_atn.*": "float"}}))
    out = tmp_path / "out"
    fill = dict(tiny=tiny_dir, out=out, empty=tmp_path / "empty.txt", typo_recipe=tmp_path / "typo.json")
    assert main([a.format(**fill) for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_evaluation_windows_keep_the_tail_when_asked():
    assert chunks(list(range(1, 11)), 4, 0) == [[0, 1, 2, 3], [0, 4, 5, 6], [0, 7, 8, 9]]
    assert chunks(list(range(1, 11)), 4, 0, tail=True) == [[0, 1, 2, 3], [0, 4, 5, 6], [0, 7, 8, 9], [0, 10]]
    assert chunks([0, 5], 4, 0, tail=True) == [[0, 5]] and chunks([0], 4, 0, tail=True) == []  # nothing to predict


def test_pooled_result_weighs_each_domain_by_its_tokens():
    a = EvalResult(100, math.e ** 1, 0.2, 0.5, math.e ** 2)
    b = EvalResult(300, math.e ** 3, 0.6, 0.9, math.e ** 1)
    pooled = EvalResult.pool([a, b])  # by hand: (100 x + 300 y) / 400
    assert pooled.tokens == 400
    assert pooled.perplexity == pytest.approx(math.e ** 2.5) and pooled.reference_perplexity == pytest.approx(math.e ** 1.25)
    assert pooled.kl_to_float == pytest.approx(0.5) and pooled.top1_agreement == pytest.approx(0.8)
    assert EvalResult.pool([EvalResult(10, 2.0)]).kl_to_float is None


def test_held_out_domains_need_no_download_and_chat_uses_the_template():
    texts = held_out_domains()
    assert list(texts) == list(DOMAINS) and all(len(t) > 800 for t in texts.values())
    assert texts["chat"].startswith("<start_of_turn>user\n") and texts["chat"].count("<start_of_turn>model\n") == 7
    assert "def wrap(" in texts["code"] and "如果" not in texts["german"] and "的" in texts["chinese"]
    with pytest.raises(GemmaEdgeError, match="unknown evaluation domain klingon; choose from english"):
        held_out_domains(["klingon"])


def test_training_text_shares_no_passage_with_the_held_out_domains():
    """QAT's training text never draws from the evaluation texts: no 200-character window of any held-out
    domain occurs in it (the language-reference topics repeat each other's sections, so topic-level
    separation alone left 80 such windows)."""
    from gemma_edge.calibration.data import pydoc_training_text, training_documents

    docs = training_documents()
    training = "\n".join(docs) + pydoc_training_text()
    for name, text in held_out_domains().items():
        assert not [i for i in range(0, len(text) - 200, 100) if text[i:i + 200] in training], name
    assert any(d.startswith("<start_of_turn>user\n") for d in docs[:3]) and any("def " in d for d in docs[:3])


def test_cli_eval_reports_every_domain(tmp_path, tiny_dir, capsys):
    assert main(["quantize", str(tiny_dir), "--recipe", "int4-channel", "--out", str(tmp_path / "q"), "--unweighted"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "q"), "--against", str(tiny_dir), "--seq-len", "32", "--tokens", "80",
                 "--report", str(tmp_path / "report")]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert set(DOMAINS) | {"all"} <= set(rows)
    report = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert sorted(report["domains"]) == sorted(DOMAINS)
    assert all(d["tokens"] == 79 for d in report["domains"].values())  # 80 tokens less BOS, tail window kept
    assert report["result"]["tokens"] == 79 * len(DOMAINS)
    assert int(rows["chat"][1]) == 79 and float(rows["chat"][3]) == pytest.approx(report["domains"]["chat"]["reference_perplexity"], rel=1e-3)


@pytest.mark.parametrize("fmt", ["int4_block32", "int4_channel", "int4_block64_asym", "int8_channel", "fp8_e4m3",
                                 "sfp8"])
def test_quantizing_by_rows_gives_the_whole_weights_integers(fmt):
    """`by_rows` bounds memory by quantizing a few rows at a time; every format's scales are per row, so
    the pieces must be exactly the whole's (here: chunks of 3 rows, the last one short)."""
    from gemma_edge.calibration.formats import QuantFormat, mse_clip_quantize
    from gemma_edge.calibration.ptq import by_rows

    w = torch.randn(11, 128, generator=torch.Generator().manual_seed(3)) * 0.4
    importance = torch.rand(128, generator=torch.Generator().manual_seed(4))
    f = QuantFormat.parse(fmt)
    whole = mse_clip_quantize(w, f, importance)
    q, err = by_rows(w, lambda rows: mse_clip_quantize(rows, f, importance), chunk_elements=3 * 128)
    for a, b in ((q.qdata, whole.qdata), (q.scale, whole.scale), (q.zero_point, whole.zero_point)):
        assert (a is None and b is None) or torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                                                        b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b)
    expected = float((whole.dequantize() - w).norm() / w.norm())
    assert err == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("preset", ["int4-block32", "int4-block32-emb4", "fp8"])
def test_weights_streamed_from_the_checkpoint_give_the_same_folder(tmp_path, preset):
    """The pipeline quantizes weights read one at a time from the shards (`iter_weights`, the float model
    never built) into the same bytes as from a loaded model's parameters; tied head included."""
    from gemma_edge.model.loader import iter_weights, load_skeleton

    path = write_tiny_checkpoint(tmp_path / "tiny", tiny_config(hidden_size=128, intermediate_size=256))
    from_model = quantize_model(load(path), PRESETS[preset], progress=False).save(tmp_path / "a")
    streamed = quantize_model(load_skeleton(path), PRESETS[preset], progress=False,
                              weights=iter_weights(path)).save(tmp_path / "b")
    assert _sha(from_model) == _sha(streamed)


@pytest.mark.parametrize("preset,activations", [("int4-block32", None), ("int4-block32-emb4", None),
                                                ("8da4w", None), ("int4-block32", "int8_dynamic"),
                                                ("int4-block32-emb4", "int8_dynamic"), ("fp8", None),
                                                ("int4-block32", "int8_block")])
@pytest.mark.parametrize("head_rows", [None, 64])
def test_the_lazy_reference_computes_the_eager_ones_logits(tiny, preset, activations, head_rows, monkeypatch):
    """`build_model(lazy=True)` keeps the integers (the 1B's float reference does not fit beside a runtime)
    and dequantizes per call: the same weights, so the same logits bit for bit, prefill and decode. With
    `head_rows` the LM head goes that many rows at a time (as the 262,144-row head does): the same dot
    products, which BLAS may sum in another order for another number of rows, so equal to float rounding."""
    from gemma_edge.calibration import checkpoint

    ckpt = quantize_model(tiny, PRESETS[preset], progress=False)
    blocks = None
    if activations == "int8_block":
        blocks = {name: 32 for name in ckpt.quantized}
    eager = ckpt.build_model(64, activations=activations, activation_blocks=blocks)
    if head_rows is not None:
        monkeypatch.setattr(checkpoint, "LAZY_ROWS", head_rows)
    lazy = ckpt.build_model(64, activations=activations, activation_blocks=blocks, lazy=True)
    assert all(p.is_meta for n, p in lazy.named_parameters() if n.endswith("proj.weight"))  # no float copy held
    assert isinstance(lazy.lm_head, checkpoint.RowChunkedLinear) == (head_rows is not None)
    tokens = torch.tensor([[2, 9, 14, 3, 77, 5, 40, 41, 8]])
    with torch.no_grad():
        for model in (eager, lazy):
            model.reset_caches()
        def same(a: torch.Tensor, b: torch.Tensor) -> None:
            if head_rows is None:
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b)

        same(lazy(tokens, torch.arange(9)), eager(tokens, torch.arange(9)))
        step = torch.tensor([[11]])
        same(lazy(step, torch.tensor([9])), eager(step, torch.tensor([9])))


@pytest.mark.parametrize("preset", ["int4-block32", "int4-block32-emb4", "8da4w", "fp8"])
def test_a_checkpoint_loaded_as_stored_gives_the_same_weights_and_reference(tiny, tmp_path, preset):
    """`load(unpack=False)` keeps int4 two per byte; rows unpacked on demand are the unpacked checkpoint's,
    and the reference `load_quantized` builds from it (lazy or eager) computes the unpacked one's logits."""
    from gemma_edge.calibration.checkpoint import load_quantized
    from gemma_edge.calibration.formats import StoredQTensor

    folder = quantize_model(tiny, PRESETS[preset], progress=False).save(tmp_path / "q")
    unpacked, stored = QuantizedCheckpoint.load(folder), QuantizedCheckpoint.load(folder, unpack=False)
    assert set(unpacked.quantized) == set(stored.quantized)
    for name, q in unpacked.quantized.items():
        s = stored.quantized[name]
        assert isinstance(s, StoredQTensor) and s.shape == q.shape
        if q.fmt.bits == 4:
            assert s.stored.numel() * 2 == q.qdata.numel()  # half a byte per weight held
        assert s.scale is None or s.scale.dtype == torch.bfloat16  # scales as stored, float32 per call
        rows = torch.tensor([q.shape[0] - 1, 0, 3])
        assert torch.equal(s.rows(rows).qdata, q.qdata[rows]) and torch.equal(s.dequantize(), q.dequantize())
    eager = unpacked.build_model(64)
    tokens = torch.tensor([[2, 9, 14, 3, 77, 5, 40, 41, 8]])
    with torch.no_grad():
        expected = eager(tokens, torch.arange(9))
        for lazy in (False, True):
            model = load_quantized(folder, max_seq_len=64, lazy=lazy).model
            assert torch.equal(model(tokens, torch.arange(9)), expected)


def test_a_streamed_checkpoint_with_a_missing_or_misshapen_tensor_is_refused(tmp_path):
    """The streamed path never builds the model, so it checks what the model's loading checked."""
    from gemma_edge.model.loader import load_skeleton

    path = write_tiny_checkpoint(tmp_path / "tiny", tiny_config())
    skeleton = load_skeleton(path)
    state = dict(load(path).model.state_dict())
    without = [(k, v) for k, v in state.items() if k != "layers.1.mlp.up_proj.weight"]
    with pytest.raises(GemmaEdgeError, match=r"1 tensors missing, e.g. layers.1.mlp.up_proj.weight"):
        quantize_model(skeleton, PRESETS["int4-block32"], progress=False, weights=without)
    bent = [(k, v[:, :32] if k == "layers.0.mlp.up_proj.weight" else v) for k, v in state.items()]
    with pytest.raises(GemmaEdgeError, match=r"tensor layers.0.mlp.up_proj.weight \[128, 32\] is not in a model"):
        quantize_model(skeleton, PRESETS["int4-block32"], progress=False, weights=bent)


def test_quantize_refuses_a_quantized_checkpoint_before_any_work(tiny, tmp_path):
    from gemma_edge.model.loader import load_skeleton
    from gemma_edge.pipeline.build import quantize

    q = quantize_model(tiny, PRESETS["int4-block32"], progress=False).save(tmp_path / "q")
    with pytest.raises(GemmaEdgeError, match=r"q: is a quantized checkpoint; it has no float weights"):
        load_skeleton(q)
    with pytest.raises(GemmaEdgeError, match=r"no float weights"):
        quantize(q, tmp_path / "again", "int4-block32", cache=False, progress=False)

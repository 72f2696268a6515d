"""ExecuTorch export on tiny random models: semantics through executorch.runtime, metadata, determinism."""

import contextlib
import hashlib
import json

import pytest
import torch

from gemma_edge.calibration.ptq import quantize_model
from gemma_edge.calibration.recipe import PRESETS, QuantRecipe
from gemma_edge.export.executorch import export_pte
from gemma_edge.model import GLOBAL, SLIDING, GemmaEdgeError, load
from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint
from gemma_edge.pipeline.build import export
from gemma_edge.runtimes.executorch_runner import ExecuTorchRunner

W = 8
# The fewest layers that cover both cache kinds: a sliding layer (its ring wraps in the prompts below) and a
# global one. Lowering costs about the same per layer whatever its size.
TWO_KINDS = dict(num_layers=2, layer_types=(SLIDING, GLOBAL))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("et")
    ckpt = write_tiny_checkpoint(root / "tiny", tiny_config(sliding_window=W, num_kv_heads=2, **TWO_KINDS))
    return ckpt, export(ckpt, root / "pte", "pte", max_seq_len=4 * W)


def _teacher_forced(runner, tokens, prefill):
    out = [runner.prefill(tokens[:prefill])]
    out += [runner.decode(t) for t in tokens[prefill:]]
    return torch.stack(out)


@pytest.mark.parametrize("prefill", [W - 3, W, 2 * W + 3])
def test_pte_logits_equal_the_reference(tiny_export, prefill):
    ckpt, folder = tiny_export
    model = load(ckpt, max_seq_len=4 * W).model
    tokens = torch.randint(0, model.config.vocab_size, (3 * W + 2,), generator=torch.Generator().manual_seed(prefill)).tolist()
    with torch.no_grad():
        full = model(torch.tensor([tokens]), torch.arange(len(tokens)))[0]
    runner = ExecuTorchRunner(folder / "model.pte")
    runner.reset()
    got = _teacher_forced(runner, tokens, prefill)
    torch.testing.assert_close(got, full[prefill - 1:], atol=1e-4, rtol=0)
    runner.reset()  # a second session in the same loaded program: stale cache entries must not leak in
    torch.testing.assert_close(_teacher_forced(runner, tokens, prefill), full[prefill - 1:], atol=1e-4, rtol=0)


def test_sliding_layers_read_only_the_keys_they_need(tiny_export):
    """A call of several tokens hands custom_sdpa the call's keys and the filled slots, not the whole ring, with
    a mask (the kernel reads every key it is given then; at least one slot, masked when empty). A one-token call
    reads the updated ring itself, causally from min(pos, W - 1): slots 0..pos before the ring wraps, all W after.
    The global layer reads its cache causally from the start."""
    from gemma_edge.export.executorch import PteDecoder

    model = load(tiny_export[0], max_seq_len=4 * W).model
    decoder = PteDecoder(model)
    seen, sdpa = [], torch.ops.llama.custom_sdpa

    def recording(q, k, v, start, mask, dropout, causal, *rest):
        seen.append((k.shape[1], start, None if mask is None else tuple(mask.shape), causal))
        return sdpa(q, k, v, start, mask, dropout, causal, *rest)

    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(torch.ops.llama, "custom_sdpa", recording)
        # torch.cond's semantics without compiling the branches (dynamo refuses the recording's side effect)
        mp.setattr(torch, "cond", lambda pred, true_fn, false_fn, operands: (true_fn if pred else false_fn)(*operands))
        for length in (3, 1):
            tokens = torch.randint(0, model.config.vocab_size, (1, length))
            for start in (0, 2, W - 1, W, 3 * W):
                seen.clear()
                decoder(tokens, torch.tensor([start]))
                if length == 1:
                    sliding = (W, min(start, W - 1), None, True)
                else:
                    n = length + max(1, min(start, W))
                    sliding = (n, 0, (length, n), False)
                assert seen == [sliding, (4 * W, start, None, True)], (length, start)


def test_a_prefill_chunk_shorter_than_the_context_keeps_the_logits(tiny_export, tmp_path):
    """`--prefill-chunk`: one call takes at most 5 tokens of a 32-position cache; our runner and ExecuTorch's
    TextLLMRunner split longer prompts (the chunks cross the ring's wrap), and the logits stay the reference's."""
    from executorch.runtime import Runtime

    from gemma_edge.runtimes.executorch_runner import StockTextRunner

    ckpt, unchunked = tiny_export
    folder = export(ckpt, tmp_path / "pte", "pte", max_seq_len=4 * W, prefill_chunk=W - 3, cache=False)
    program = Runtime.get().load_program(str(folder / "model.pte"))
    value = lambda name: program.load_method(name).execute([])[0]  # noqa: E731
    assert (value("get_max_seq_len"), value("get_max_context_len")) == (W - 3, 4 * W)
    model = load(ckpt, max_seq_len=4 * W).model
    tokens = torch.randint(0, model.config.vocab_size, (3 * W + 2,), generator=torch.Generator().manual_seed(7))
    tokens = tokens.tolist()
    with torch.no_grad():
        full = model(torch.tensor([tokens]), torch.arange(len(tokens)))[0]
    runner = ExecuTorchRunner(folder / "model.pte")
    for prefill in (W - 3, 2 * W + 3):
        runner.reset()
        torch.testing.assert_close(_teacher_forced(runner, tokens, prefill), full[prefill - 1:], atol=1e-4, rtol=0)
    with pytest.raises(GemmaEdgeError, match="no tokens to run"):
        runner.prefill([])
    prompt = "hello there, hello there"  # longer than one call in the tiny vocabulary
    text = StockTextRunner(folder).generate(prompt, max_new_tokens=8)[0]
    assert text and text == StockTextRunner(unchunked).generate(prompt, max_new_tokens=8)[0]


def test_a_prefill_chunk_longer_than_the_context_is_refused(tiny_export, tmp_path):
    with pytest.raises(GemmaEdgeError, match="--prefill-chunk 40: one call takes 1 to --max-seq-len"):
        export_pte(tiny_export[0], tmp_path / "pte", max_seq_len=4 * W, prefill_chunk=5 * W)


def test_runner_metadata(tiny_export):
    from executorch.runtime import Runtime

    ckpt, folder = tiny_export
    program = Runtime.get().load_program(str(folder / "model.pte"))
    value = lambda name: program.load_method(name).execute([])[0]  # noqa: E731
    config = load(ckpt).config
    assert value("get_max_seq_len") == value("get_max_context_len") == 4 * W
    assert value("get_vocab_size") == config.vocab_size and value("get_n_layers") == config.num_layers
    assert value("use_kv_cache") and value("use_sdpa_with_kv_cache") and value("enable_dynamic_shape")
    assert value("get_bos_id") == 2
    eos = program.load_method("get_eos_ids").execute([])
    assert sorted(int(e) for e in eos) == [1, 6]  # <eos> and <end_of_turn> of the tiny vocabulary
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256((folder / "model.pte").read_bytes()).hexdigest()
    assert manifest["metadata"]["get_eos_ids"] == [1, 6] and manifest["runtime"] == "executorch"
    assert manifest["activations"] == "none"


def test_stock_runner_stats_carry_what_the_android_app_reads(tiny_export):
    """The app's Java core parses onStats JSON from the same C++ runner; its sample must match this one."""
    from pathlib import Path

    from gemma_edge.runtimes.executorch_runner import StockTextRunner

    _, folder = tiny_export
    _, stats = StockTextRunner(folder).generate("hello there", max_new_tokens=16)
    sample = set(json.loads((Path(__file__).resolve().parents[1] / "android_demo" / "shared" /
                             "runner_stats.json").read_text()))
    assert stats["generated_tokens"] >= 1 and stats["prompt_tokens"] >= 2
    # The runner's own rates are the ones the app recomputes from the timestamps (it reads only those); the
    # runner leaves a rate out when its span is under a millisecond, as on this tiny model.
    rates = {"prefill_token_per_sec": (stats["prompt_tokens"], stats["prompt_eval_end_ms"] - stats["inference_start_ms"]),
             "decode_token_per_sec": (stats["generated_tokens"], stats["inference_end_ms"] - stats["prompt_eval_end_ms"])}
    assert sample - set(rates) <= set(stats)
    for key, (tokens, span) in rates.items():
        if span > 0:
            assert stats[key] == pytest.approx(tokens * 1000 / span, rel=1e-3), key
        else:
            assert key not in stats, key


def test_two_exports_are_byte_identical(tmp_path):
    """The build itself, twice (no cache)."""
    ckpt = write_tiny_checkpoint(tmp_path / "t", tiny_config(num_layers=1, sliding_window=W))
    a = export_pte(ckpt, tmp_path / "a", max_seq_len=2 * W)
    b = export_pte(ckpt, tmp_path / "b", max_seq_len=2 * W)
    for name in ("model.pte", "tokenizer.model", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_quantized_pte_runs_on_the_checkpoint_integers(tmp_path):
    loaded = load(write_tiny_checkpoint(tmp_path / "t", tiny_config(num_layers=1, hidden_size=128,
                                                                     intermediate_size=256)))
    q = quantize_model(loaded, PRESETS["8da4w"], progress=False).save(tmp_path / "q")
    folder = export_pte(q, tmp_path / "pte", max_seq_len=32)
    reference = load(q, max_seq_len=32).model
    tokens = list(range(10, 30))
    with torch.no_grad():
        expected = reference(torch.tensor([tokens]), torch.arange(20))[0, -1]
    got = ExecuTorchRunner(folder / "model.pte").prefill(tokens)
    assert torch.isfinite(got).all()
    assert torch.nn.functional.cosine_similarity(got, expected, dim=0) > 0.99
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "8da4w" and manifest["activations"] == "int8_dynamic"
    # int4-block32 lowers to the same XNNPACK kernels on the same integers: the same program, byte for
    # byte (which is why the real-model tests export only int4-block32)
    weight_only = quantize_model(loaded, PRESETS["int4-block32"], progress=False).save(tmp_path / "q4")
    same = export_pte(weight_only, tmp_path / "pte-q4", max_seq_len=32)
    assert (same / "model.pte").read_bytes() == (folder / "model.pte").read_bytes()


def test_a_tied_int4_table_is_stored_once_with_the_same_logits(tmp_path, monkeypatch):
    """int4-block32-emb4 (gather and LM head read one int4 table): the export keeps the table once, in
    model.ptd beside model.pte — the gather's bytes and those XNNPACK packs for the pair-swapped head are one
    entry — and computes what the export with the head's own copy computes, bit for bit, under our runner and
    ExecuTorch's TextLLMRunner alike."""
    import gemma_edge.export.executorch as et
    import gemma_edge.export.xnnpack_quant as xq
    from gemma_edge.runtimes.executorch_runner import StockTextRunner

    class OwnCopy(xq.DynActIntLinear):  # the head as before: its own integers, in XNNPACK's weights
        def __init__(self, table):
            super().__init__(table, xq.LM_HEAD)

    # rows beyond the tokenizer's so that the table outweighs the head's 64 x 64 input permutation
    loaded = load(write_tiny_checkpoint(tmp_path / "t", tiny_config(sliding_window=W, vocab_size=4096, **TWO_KINDS)))
    q = quantize_model(loaded, PRESETS["int4-block32-emb4"], progress=False).save(tmp_path / "q")
    once = export_pte(q, tmp_path / "once", max_seq_len=4 * W)
    monkeypatch.setattr(xq, "TiedTableHead", OwnCopy)
    monkeypatch.setattr(et, "tag_shared_table", lambda program: None)
    twice = export_pte(q, tmp_path / "twice", max_seq_len=4 * W)

    config = loaded.config
    table_bytes = config.vocab_size * config.hidden_size // 2  # packed int4
    assert not (twice / "model.ptd").exists()
    ptd = (once / "model.ptd").stat().st_size
    assert table_bytes <= ptd < table_bytes * 1.25, (ptd, table_bytes)  # one copy (two would be 2x)
    saved = (twice / "model.pte").stat().st_size - (once / "model.pte").stat().st_size - ptd
    assert saved > 0.75 * table_bytes - config.hidden_size ** 2 * 4, (saved, table_bytes)
    assert "model.ptd" in json.loads((once / "manifest.json").read_text())["files"]

    tokens = list(range(10, 10 + 3 * W))
    a, b = ExecuTorchRunner(once / "model.pte"), ExecuTorchRunner(twice / "model.pte")
    assert torch.equal(_teacher_forced(a, tokens, W + 2), _teacher_forced(b, tokens, W + 2))
    assert StockTextRunner(once).generate("hello there", 12)[0] == StockTextRunner(twice).generate("hello there", 12)[0]


def test_the_head_in_slices_gives_the_same_logits_one_delegate_per_slice(tmp_path, monkeypatch):
    """`SplitHead`: the int4 head as 8 row slices, each XNNPACK delegate packing 1/8 of it at load, computes
    the very logits of the head in one piece."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    from gemma_edge.export import xnnpack_quant as xq

    loaded = load(write_tiny_checkpoint(tmp_path / "t", tiny_config(num_layers=1, hidden_size=128,
                                                                     intermediate_size=256)))
    q = quantize_model(loaded, PRESETS["int4-block32"], progress=False).save(tmp_path / "q")
    tokens, logits, delegates = list(range(10, 30)), {}, {}
    for parts in (1, xq.HEAD_SLICES):
        monkeypatch.setattr(xq, "HEAD_SLICES", parts)
        folder = export_pte(q, tmp_path / f"pte{parts}", max_seq_len=32)
        runner = ExecuTorchRunner(folder / "model.pte")
        logits[parts] = torch.stack([runner.prefill(tokens)] + [runner.decode(t) for t in (5, 6, 7)])
        program = deserialize_pte_binary((folder / "model.pte").read_bytes()).program
        delegates[parts] = len(program.execution_plan[0].delegates)
    assert xq.HEAD_SLICES == 8 and torch.equal(logits[1], logits[8])
    assert delegates[8] - delegates[1] == 7 + 1  # seven more slices, and the concatenation of their logits


def test_preprocess_on_shared_weights_writes_the_same_program(tmp_path, monkeypatch):
    """`preprocess_shares_weights` (issue 21: ExecuTorch's copies for XNNPACK's preprocess held a second copy of
    every delegated weight, 5 GB at 4B): XNNPACK reads the shared tensors and leaves them as they were, so the
    program is the one ExecuTorch's own deep copies give, byte for byte; the backend is restored after."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    import gemma_edge.export.executorch as et

    loaded = load(write_tiny_checkpoint(tmp_path / "t", tiny_config(num_layers=1, hidden_size=128,
                                                                     intermediate_size=256)))
    q = quantize_model(loaded, PRESETS["int4-block32"], progress=False).save(tmp_path / "q")
    stock = XnnpackBackend.copy_exported_program_for_preprocess
    shared = export_pte(q, tmp_path / "shared", max_seq_len=32)
    assert XnnpackBackend.copy_exported_program_for_preprocess == stock
    monkeypatch.setattr(et, "preprocess_shares_weights", contextlib.nullcontext)
    copied = export_pte(q, tmp_path / "copied", max_seq_len=32)
    assert (shared / "model.pte").read_bytes() == (copied / "model.pte").read_bytes()


def test_dropping_a_filter_that_keeps_everything_writes_the_same_program(tmp_path, monkeypatch):
    """`unfiltered_when_nothing_to_filter`: ExecuTorch decomposes the program once instead of three times when
    XNNPACK's partitioner has no per-node filter; where the filter would keep every node, the program is the
    one the stock partitioner gives, byte for byte."""
    import gemma_edge.export.executorch as et

    loaded = load(write_tiny_checkpoint(tmp_path / "t", tiny_config(num_layers=1, hidden_size=128,
                                                                     intermediate_size=256)))
    q = quantize_model(loaded, PRESETS["int4-block32"], progress=False).save(tmp_path / "q")
    dropped = []

    def recording(partitioner_class):
        class Recording(unfiltered(partitioner_class)):
            def ops_to_not_decompose(self, ep):
                ops, keeps = super().ops_to_not_decompose(ep)
                dropped.append(bool(ops) and keeps is None)
                return ops, keeps
        return Recording

    unfiltered = et.unfiltered_when_nothing_to_filter
    monkeypatch.setattr(et, "unfiltered_when_nothing_to_filter", recording)
    fast = export_pte(q, tmp_path / "fast", max_seq_len=32)
    assert dropped and all(dropped)  # the filter was there, kept everything, and was dropped
    monkeypatch.setattr(et, "unfiltered_when_nothing_to_filter", lambda partitioner_class: partitioner_class)
    stock = export_pte(q, tmp_path / "stock", max_seq_len=32)
    assert (fast / "model.pte").read_bytes() == (stock / "model.pte").read_bytes()


def test_the_program_is_decomposed_once(tmp_path, monkeypatch):
    """The traced graph holds no op of ExecuTorch's decomposition table (`call_positions`), so lowering runs
    `run_decompositions` once (to functionalize), not a second time over the whole program."""
    loaded = load(write_tiny_checkpoint(tmp_path / "t", tiny_config(num_layers=2)))
    q = quantize_model(loaded, PRESETS["int4-block32"], progress=False).save(tmp_path / "q")
    tables = []
    original = torch.export.ExportedProgram.run_decompositions

    def counted(self, decomp_table=None, *args, **kwargs):
        tables.append(decomp_table)
        return original(self, decomp_table, *args, **kwargs)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", counted)
    export_pte(q, tmp_path / "pte", max_seq_len=32)
    assert tables == [{}]


def test_a_filter_that_refuses_a_node_is_kept():
    from gemma_edge.export.executorch import UNCHANGED_BY_DECOMPOSITION, unfiltered_when_nothing_to_filter

    class Module(torch.nn.Module):
        def forward(self, x):
            return torch.tanh(torch.relu(x))

    class Program:
        graph = torch.fx.symbolic_trace(Module()).graph
        dialect = "ATEN"

    ops = [torch.relu, torch.tanh]

    def partitioner_class(keeps):
        class Stock:
            def ops_to_not_decompose(self, ep):
                return ops, keeps
        return unfiltered_when_nothing_to_filter(Stock)()

    refuse_tanh = lambda node: node.target is not torch.tanh  # noqa: E731
    kept = ops + list(UNCHANGED_BY_DECOMPOSITION)
    assert partitioner_class(refuse_tanh).ops_to_not_decompose(Program) == (ops, refuse_tanh)
    assert partitioner_class(lambda node: True).ops_to_not_decompose(Program) == (kept, None)
    assert partitioner_class(None).ops_to_not_decompose(Program) == (kept, None)
    Program.dialect = "EDGE"  # asked again of the lowered program: only the ops that must have been delegated
    assert partitioner_class(None).ops_to_not_decompose(Program) == (ops, None)


def test_unsupported_formats_are_refused(tmp_path):
    loaded = load(write_tiny_checkpoint(tmp_path / "t", tiny_config(num_layers=2)))
    q = quantize_model(loaded, PRESETS["fp8"], progress=False).save(tmp_path / "fp8")
    with pytest.raises(GemmaEdgeError, match="fp8_e4m3 has no XNNPACK kernel"):
        export_pte(q, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    asym = QuantRecipe("asym", linear="int4_block32_asym")
    q = quantize_model(loaded, asym, progress=False).save(tmp_path / "asym")
    with pytest.raises(GemmaEdgeError, match="int4_block32_asym has no XNNPACK kernel"):
        export_pte(q, tmp_path / "out")


def test_refusals_name_what_each_backend_lowers():
    """The "unsupported" errors are written from the backends' lowering tables, so they list every format
    a backend does take, and a format a table takes is never refused."""
    from gemma_edge.calibration.formats import QuantFormat, quantize
    from gemma_edge.export import onnx_quant, xnnpack_quant
    from gemma_edge.export.lowering import lowering_for
    from gemma_edge.runtimes.backends import BACKENDS

    w = torch.randn(8, 64) * 0.1
    names = ["int4_block32", "int4_block16", "int4_channel", "int4_block32_asym", "int8_channel", "int8_block32",
             "fp8_e4m3", "sfp8"]
    # what docs/quantization.md says each backend runs
    expected = {"XNNPACK linear": {"int4_block32", "int4_channel", "int8_channel"},
                "ONNX linear": {"int4_block32", "int4_block16", "int4_channel", "int4_block32_asym", "int8_channel",
                                "int8_block32", "fp8_e4m3"},
                "ONNX gather": {"int4_block32", "int4_block16", "int4_channel", "int8_channel", "int8_block32",
                                "fp8_e4m3"},
                "ONNX tied head": {"int4_block32", "int4_block16", "int4_channel", "int4_block32_asym", "int8_channel",
                                   "int8_block32", "fp8_e4m3"}}
    pte, ort = BACKENDS["pte"].lowerings(), BACKENDS["onnx"].lowerings()  # what each backend declares
    tables = {"XNNPACK linear": pte["linear"], "ONNX linear": ort["linear"], "ONNX gather": ort["embedding"],
              "ONNX tied head": ort["tied head"]}
    assert tables["XNNPACK linear"] is xnnpack_quant.LINEAR and tables["ONNX gather"] is onnx_quant.GATHER
    for name, table in tables.items():
        assert {n for n in names if any(e.accepts(QuantFormat.parse(n)) for e in table)} == expected[name], name
        for fmt_name in names:
            fmt = QuantFormat.parse(fmt_name)
            taken = [e for e in table if e.accepts(fmt)]
            if taken:
                assert lowering_for(table, fmt, "unused") is taken[0].handler
                continue
            with pytest.raises(GemmaEdgeError) as err:
                lowering_for(table, quantize(w, fmt).fmt, f"{fmt_name} has no {name} lowering")
            assert all(e.formats in str(err.value) for e in table), (name, fmt_name, str(err.value))


def test_bench_reports_every_figure(tiny_export, capsys):
    from gemma_edge.cli.main import main

    _, folder = tiny_export
    assert main(["bench", str(folder), "--stock", "--prompt-len", "16", "--decode-tokens", "4", "--runs", "1",
                 "--json"]) == 0
    out = capsys.readouterr().out
    ours, stock = json.loads(out[out.index("["):])
    assert (ours["mode"], stock["mode"]) == ("runner", "stock")
    for report in (ours, stock):
        for key in ("prefill_tok_s", "decode_tok_s", "ttft_s", "peak_rss_mib", "after_load_rss_mib", "file_mib"):
            assert report[key] > 0, key
        assert report["baseline_rss_mib"] < report["after_load_rss_mib"] <= report["peak_rss_mib"]
        assert report["file_mib"] == pytest.approx((folder / "model.pte").stat().st_size / 2**20)
    # the stock runner tokenized the repeated word itself: BOS + 15 words, one token each
    assert stock["stock_prompt_tokens"] == 16 and 1 <= stock["stock_decoded_tokens"] <= 4


def test_the_pte_backend_record_matches_its_export(tiny_export):
    from gemma_edge.export.manifest import read_manifest
    from gemma_edge.runtimes import artifact_files
    from gemma_edge.runtimes.backends import BACKENDS, backend_of

    folder = tiny_export[1]
    b, manifest = backend_of(folder), read_manifest(folder)
    assert b is BACKENDS["pte"] and (b.artifact, b.runtime) == (manifest["artifact"], manifest["runtime"])
    assert [p.name for p in artifact_files(folder)] == ["model.pte"]


@pytest.mark.parametrize("recipe", [None, "8da4w", "int4-block32-emb4"])
def test_skipping_idle_passes_writes_the_same_program(tmp_path, monkeypatch, recipe):
    """`idle_passes.skipping_idle_passes` (export time: an ExportPass re-runs every node even where it rewrites
    nothing): for the float model, int4 weights with int8 activations (the program int4-block32 gives too, see
    above) and the shared int4 table (its custom tag on the q/dq nodes), passes are skipped and the program is
    the one ExecuTorch's full pass list gives, byte for byte."""
    import gemma_edge.export.idle_passes as ip

    source = write_tiny_checkpoint(tmp_path / "t", tiny_config(sliding_window=W, vocab_size=1024, **TWO_KINDS))
    if recipe is not None:
        source = quantize_model(load(source), PRESETS[recipe], progress=False).save(tmp_path / "q")
    skipped = []
    idle = ip.idle
    monkeypatch.setattr(ip, "idle", lambda name, gm: idle(name, gm) and not skipped.append(name))
    fast = export_pte(source, tmp_path / "fast", max_seq_len=4 * W)
    assert {"SymToTensorPass", "ConvertToLinearPass", "ConstPropPass"} <= set(skipped), skipped
    monkeypatch.setattr(ip, "HAS_WORK", {})
    full = export_pte(source, tmp_path / "full", max_seq_len=4 * W)
    for name in ("model.pte", "model.ptd"):
        assert (fast / name).exists() == (full / name).exists(), name
        assert not (fast / name).exists() or (fast / name).read_bytes() == (full / name).read_bytes(), name


def test_idle_pass_triggers_see_the_ops_they_rewrite():
    """Each trigger fires on a graph holding what its pass rewrites (a trigger that never fired would skip its
    pass where it is needed), in the dialect the pass sees; a pass not listed is never idle."""
    from executorch.exir import EdgeCompileConfig, to_edge

    import gemma_edge.export.idle_passes as ip

    class Calls(torch.nn.Module):
        def forward(self, x, w, n):
            y = torch.mm(x, w.t()) + torch.ones(2, 2).sum()  # aten.t, mm, a call on constants only
            z = (y.to(torch.float16) * 2).float() + n.shape[0]  # copies to a dtype; a symbol where a tensor goes
            return z, y * torch.arange(2), y.mean(dim=-1)  # int64 times float32: mixed types; a portable mean

    example = (torch.randn(2, 4), torch.randn(2, 4), torch.zeros(3))
    program = torch.export.export(Calls(), example, dynamic_shapes=(None, None, {0: torch.export.Dim("n")}),
                                  strict=False)
    traced = program.graph_module  # what the edge passes see
    decomposed = program.run_decompositions().graph_module
    edge = to_edge(program, compile_config=EdgeCompileConfig(_check_ir_validity=False)).exported_program()
    for name, gm in [("NormalizeTransposePass", traced), ("ReplaceBrokenOpsWithFunctionalOpsPass", traced),
                     ("SymToTensorPass", traced), ("RemoveMixedTypeOperators", traced),
                     ("ConvertToLinearPass", decomposed), ("ConstPropPass", decomposed),
                     ("RemoveRedundantCopyPass", decomposed), ("DimOrderOpsRevertPass", edge.graph_module),
                     ("LegalizePortableDimOrderPass", edge.graph_module)]:
        assert not ip.idle(name, gm), name
    assert ip.idle("RemoveRedundantCopyPass", traced)  # aten.to, not yet _to_copy
    parent = next(node for node in decomposed.graph.nodes if node.op == "placeholder" and node.name == "x")
    with decomposed.graph.inserting_after(parent):
        decomposed.graph.call_function(torch.ops.quantized_decomposed.quantize_per_tensor.default,
                                       (parent, 0.1, 0, -128, 127, torch.int8))
    assert ip.idle("PropagateCustomMetaPass", decomposed)
    parent.meta["custom"] = {"delegate_constant_tag": "t"}
    assert not ip.idle("PropagateCustomMetaPass", decomposed)
    assert not ip.idle("ScalarToTensorPass", traced)  # not listed: always runs

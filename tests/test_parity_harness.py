"""The parity harness catches planted faults, each as a failing report and a non-zero exit."""

import json
import shutil

import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file

from gemma_edge.cli.main import main
from gemma_edge.export.executorch import export_pte
from gemma_edge.export.onnx import export_onnx
from gemma_edge.model import GLOBAL, SLIDING, GemmaEdgeError
from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint
from gemma_edge.runtimes import open_runner
from gemma_edge.runtimes.parity import assert_parity, run_parity

W = 48  # short prompts and their 32-token continuations stay inside it; the passage goes past it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    ckpt = write_tiny_checkpoint(root / "tiny", tiny_config(sliding_window=W, num_kv_heads=2))
    return root, ckpt


@pytest.fixture(scope="module")
def clean_onnx(tiny):
    root, ckpt = tiny
    return export_onnx(ckpt, root / "onnx", max_seq_len=256)


def test_clean_exports_pass_and_the_report_names_every_metric(tiny, clean_onnx, tmp_path):
    report = assert_parity(clean_onnx)
    assert report.gate == "fidelity.float32" and report.thresholds["max_abs_logit"] == 1e-3
    assert len(report.prompts) == 4 and report.prompts[-1].tokens == W + 64  # a passage past the window
    assert all(p.runtime_loop_agrees and p.greedy_tokens == 32 for p in report.prompts)
    assert main(["parity", str(clean_onnx), "--report", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "parity.json").read_text())
    assert saved["passed"] and set(saved["prompts"][0]["metrics"]) == {
        "finite", "max_abs_logit", "cosine_min", "top1", "top5", "kl", "perplexity_ref", "perplexity"}
    assert "KL(ref‖art)" in (tmp_path / "parity.md").read_text()


def test_pte_with_one_layer_scaled_by_1_01_fails(tmp_path):
    """Two layers (sliding, global) keep the .pte's lowering short; the fault is in the global one."""
    ckpt = write_tiny_checkpoint(tmp_path / "tiny", tiny_config(sliding_window=W, num_kv_heads=2, num_layers=2,
                                                                layer_types=(SLIDING, GLOBAL)))
    faulty = tmp_path / "faulty"
    shutil.copytree(ckpt, faulty)
    state = load_file(str(faulty / "model.safetensors"))
    for name in [n for n in state if n.startswith("model.layers.1.") and n.endswith("proj.weight")]:
        state[name] = state[name] * 1.01
    save_file(state, str(faulty / "model.safetensors"), metadata={"format": "pt"})
    pte = export_pte(faulty, tmp_path / "pte", max_seq_len=256)
    assert main(["parity", str(pte), "--source", str(ckpt), "--report", str(tmp_path / "r")]) == 1
    failures = json.loads((tmp_path / "r" / "parity.json").read_text())["failures"]
    assert any("max |dlogit|" in f for f in failures)
    assert main(["parity", str(pte)]) == 0  # against the checkpoint it really came from: exact


def test_onnx_with_window_511_instead_of_512_fails_only_past_the_window(tiny, clean_onnx, tmp_path):
    model = onnx.load(str(clean_onnx / "model.onnx"))
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "GroupQueryAttention" and attr.name == "local_window_size" and attr.i == W:
                attr.i = W - 1
    shutil.copytree(clean_onnx, tmp_path / "bad")
    onnx.save(model, str(tmp_path / "bad" / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    short = tmp_path / "short.json"
    short.write_text(json.dumps(["The quick", "hello"]))  # with their continuations, inside the window
    # the fault is planted on purpose: --no-verify (and no cache: a patched artifact's report is no one's)
    assert main(["parity", str(tmp_path / "bad"), "--prompts", str(short), "--no-verify", "--no-cache"]) == 0
    report = run_parity(tmp_path / "bad", verify=False)
    assert not report.passed
    assert {f.split(":")[0] for f in report.failures} <= {p.name for p in report.prompts if p.tokens + 32 > W}


def test_nan_in_one_logit_fails(tiny, clean_onnx, monkeypatch, tmp_path):
    class OneNaN:
        def __init__(self, runner):
            self.runner, self.calls = runner, 0

        def reset(self):
            self.runner.reset()

        def prefill(self, tokens):
            return self.runner.prefill(tokens)

        def decode(self, token):
            self.calls += 1
            logits = self.runner.decode(token)
            if self.calls == 3:
                logits = logits.clone()
                logits[5] = float("nan")
            return logits

    monkeypatch.setattr("gemma_edge.runtimes.open_runner", lambda folder, threads=None, **kw: OneNaN(open_runner(folder)))
    assert main(["parity", str(clean_onnx), "--report", str(tmp_path), "--no-cache"]) == 1  # a patched runtime
    saved = json.loads((tmp_path / "parity.json").read_text())
    assert any("NaN or Inf" in f for f in saved["failures"])
    with pytest.raises(AssertionError, match="NaN or Inf"):
        assert_parity(clean_onnx, runner=OneNaN(open_runner(clean_onnx)))


def test_quantization_loss_uses_the_recipe_thresholds(tiny, tmp_path):
    from gemma_edge.calibration.ptq import quantize_model
    from gemma_edge.calibration.recipe import PRESETS
    from gemma_edge.model import load

    root, ckpt = tiny
    q = quantize_model(load(ckpt), PRESETS["int4-block32"], progress=False).save(tmp_path / "q")
    folder = export_onnx(q, tmp_path / "onnx", max_seq_len=256)
    assert run_parity(folder).passed  # fidelity: exact against the quantized reference
    loss = run_parity(folder, against="float")
    assert loss.gate == "quantization_loss.int4-block32" and loss.reference == str(ckpt.resolve())
    assert all(0 < p.metrics["kl"] and p.metrics["top1"] < 1.0 + 1e-9 for p in loss.prompts)


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["parity", str(tmp_path)]) == 2
    assert "manifest.json: missing" in capsys.readouterr().err
    (tmp_path / "p.json").write_text("{}")
    assert main(["parity", str(tmp_path), "--prompts", str(tmp_path / "p.json")]) == 2


def test_runner_override_is_used(tiny, clean_onnx):
    calls = []

    class Spy:
        def __init__(self):
            self.inner = open_runner(clean_onnx)

        def reset(self):
            self.inner.reset()

        def prefill(self, tokens):
            calls.append(len(tokens))
            return self.inner.prefill(tokens)

        def decode(self, token):
            return self.inner.decode(token)

    run_parity(clean_onnx, runner=Spy())
    assert calls and torch.tensor(calls).min() >= 1


def test_a_manifest_without_a_source_path_asks_for_one(clean_onnx, tmp_path):
    shutil.copytree(clean_onnx, tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del manifest["source"]["path"], manifest["manifest_sha256"]  # as older exports wrote it
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GemmaEdgeError, match="records no source path.*--source"):
        run_parity(tmp_path / "old")


def test_the_backend_table_says_what_its_exporter_writes(clean_onnx, tmp_path):
    """Each backend's record (artifact, runtime, model files) agrees with the manifest its own exporter
    wrote, and a folder with no artifact is refused naming every backend's file."""
    from gemma_edge.export.manifest import read_manifest
    from gemma_edge.runtimes import artifact_files
    from gemma_edge.runtimes.backends import BACKENDS, backend_of

    b, manifest = backend_of(clean_onnx), read_manifest(clean_onnx)
    assert b is BACKENDS["onnx"] and (b.artifact, b.runtime) == (manifest["artifact"], manifest["runtime"])
    assert [p.name for p in artifact_files(clean_onnx)] == ["model.onnx", "model.onnx.data"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GemmaEdgeError, match="neither model.pte nor model.onnx"):
        backend_of(empty)


def test_int8_block32_end_to_end(tiny):
    """The int8-block32 preset: ONNX computes its quantized reference (MatMulNBits with 8 bits for the
    linears and the tied head, whose tensors the Gather reads too, so the table is stored once) and passes
    parity; XNNPACK has no int8 block kernel, and the .pte export says what it takes."""
    from gemma_edge.calibration.ptq import quantize_model
    from gemma_edge.calibration.recipe import PRESETS
    from gemma_edge.model import load

    root, ckpt = tiny
    q = quantize_model(load(ckpt), PRESETS["int8-block32"], progress=False).save(root / "q-int8-block32")
    folder = export_onnx(q, root / "onnx-int8-block32", max_seq_len=256)
    report = assert_parity(folder)
    assert report.gate == "fidelity.weight_only" and all(p.greedy_tokens == 32 for p in report.prompts)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(a.i == 8 for n in nbits for a in n.attribute if a.name == "bits")
    assert "embed_tokens.weight.nbits" in {n.input[1] for n in nbits}  # the head
    inits = {i.name for i in model.graph.initializer}
    assert "embed_tokens.weight.nbits" in inits and not any(n.startswith("lm_head") for n in inits)
    assert not any(n.startswith("embed_tokens.weight.qdata") for n in inits)  # no second copy for the Gather
    with pytest.raises(GemmaEdgeError, match="int8_block32 has no XNNPACK kernel.*symmetric int8 per channel"):
        export_pte(q, root / "pte-int8-block32")
    assert not (root / "pte-int8-block32").exists()

"""QAT and the grid import on tiny models: gradients, the STE, bit-exact resume, exact scale recovery."""

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gemma_edge.calibration import qat
from gemma_edge.calibration.checkpoint import QuantizedCheckpoint
from gemma_edge.calibration.evaluate import evaluate
from gemma_edge.calibration.formats import QuantFormat, fake_quantize
from gemma_edge.calibration.grid_import import grid_qtensor, import_grid
from gemma_edge.calibration.ptq import float_weights, quantize_model
from gemma_edge.calibration.qat import Processes, QATConfig, QATStudent, teacher_target, train
from gemma_edge.calibration.recipe import PRESETS, QuantRecipe
from gemma_edge.cli.main import main
from gemma_edge.model import GemmaEdgeError, load
from gemma_edge.model.hf_checkpoint import write_hf_folder
from gemma_edge.model.tiny import random_state_dict, tiny_config, write_tiny_checkpoint
from gemma_edge.model.tokenizer import tiny_tokenizer_model

INT4_CHANNEL = QuantFormat.parse("int4_channel")
SEQ_LEN = 24
GRID_RECIPE = QuantRecipe("grid", linear="int4_block32", embedding="int8_channel")


@pytest.fixture
def tiny(tmp_path):
    return load(write_tiny_checkpoint(tmp_path / "tiny"), max_seq_len=64, progress=False)


def _sequences(loaded, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[loaded.config.bos_token_id] + torch.randint(3, loaded.config.vocab_size, (SEQ_LEN - 1,), generator=g).tolist()
            for _ in range(n)]


def _same_integers(a: QuantizedCheckpoint, b: QuantizedCheckpoint) -> bool:
    return sorted(a.quantized) == sorted(b.quantized) and all(
        torch.equal(a.quantized[k].qdata, b.quantized[k].qdata) and torch.equal(a.quantized[k].scale, b.quantized[k].scale)
        for k in a.quantized)


def test_lsq_gradient_of_the_scale_by_hand():
    """d/ds of sum(s * clamp(round(w/s))) is round(w/s) - w/s inside the range and the clip level outside."""
    s = torch.tensor([[0.5]], requires_grad=True)
    w = torch.tensor([[0.3, -1.1, 2.2, 10.0, -10.0, 0.0, 1.0, -3.9]])
    fake_quantize(w, INT4_CHANNEL, s).sum().backward()
    x = w / 0.5  # 0.6 -2.2 4.4 20 -20 0 2 -7.8
    by_hand = (x.round() - x)[0, [0, 1, 2, 5, 6, 7]].sum() + 7 + (-8)
    assert s.grad.item() == pytest.approx(by_hand.item(), abs=1e-6)


@pytest.mark.parametrize("fmt", ["int4_block32", "int8_channel", "int4_block32_asym"])
def test_fused_fake_quant_equals_the_op_by_op_autograd(fmt):
    """formats' one-node fake-quant against the same maths written with a detached-round STE and clamp."""
    fmt = QuantFormat.parse(fmt)
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(4, 64, generator=g) * fmt.qrange[1] * 0.15).requires_grad_()  # a few beyond the range
    groups = 64 // (fmt.block or 64)
    s = (torch.rand(4, groups, generator=g) * 0.3 + 0.2).requires_grad_()
    zp = None if fmt.symmetric else torch.randint(0, 16, (4, groups), generator=g).to(torch.int8)
    upstream = torch.randn(4, 64, generator=g)
    (fake_quantize(w, fmt, s, zp) * upstream).sum().backward()
    got = (w.grad.clone(), s.grad.clone())
    w.grad = s.grad = None
    x = w.reshape(4, groups, -1) / s[..., None]
    z = 0.0 if zp is None else zp.float()[..., None]
    q = torch.clamp(x + (x.round() - x).detach() + z, *fmt.qrange)
    (((q - z) * s[..., None]).reshape(4, 64) * upstream).sum().backward()
    assert torch.allclose(got[0], w.grad) and torch.allclose(got[1], s.grad, rtol=1e-4, atol=1e-4)  # summed in another order
    assert 0 < (got[0] == 0).sum() < w.numel()  # some weights clipped, most not


def test_ste_passes_gradients_inside_the_clip_range_and_blocks_them_outside():
    s = torch.tensor([[0.5]])
    w = torch.tensor([[0.3, -1.1, 3.6, -4.1, 3.8, -4.3, 9.0, -9.0]], requires_grad=True)
    fake_quantize(w, INT4_CHANNEL, s).sum().backward()
    # w/s: 0.6 -2.2 7.2 -8.2 | 7.6 -8.6 18 -18: the last four round outside [-8, 7] and are clipped
    assert w.grad.tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("recipe", ["int4-block32", "int4-block32-emb4", "fp8"])
def test_student_starts_at_the_ptq_checkpoint_and_gradients_reach_every_scale(tiny, recipe):
    init = quantize_model(tiny, PRESETS[recipe], progress=False)
    student = QATStudent(tiny, init, QATConfig(seq_len=SEQ_LEN, top_k=8))
    assert _same_integers(student.to_checkpoint(init, {}), init)
    tokens = torch.tensor(_sequences(tiny, 1))
    student.loss(tokens, teacher_target(tiny.model, tokens, 8)).backward()
    shared = PRESETS[recipe].embedding == PRESETS[recipe].lm_head  # one table is lookup and head: it trains
    expected = {n for n in init.quantized if n != "embed_tokens.weight"} | ({"embed_tokens.weight"} if shared else set())
    assert set(student.quantized) == expected
    for name, qw in student.quantized.items():
        assert qw.quant.log_scale.grad is not None and qw.quant.log_scale.grad.abs().sum() > 0, name
        assert qw.latent.grad.abs().sum() > 0, name


def test_student_starts_at_integers_that_are_not_nearest_rounding(tiny):
    """An init whose integers are not the float weights' nearest rounding (GPTQ's, an imported grid) is where
    the student starts too: the latent weight moves onto those levels, and only there."""
    init = quantize_model(tiny, PRESETS["int4-block32"], progress=False)
    name = "layers.0.mlp.down_proj.weight"
    q = init.quantized[name]
    codes = q.qdata.clone()
    codes[0, :7] = torch.where(codes[0, :7] < 7, codes[0, :7] + 1, codes[0, :7] - 1)  # GPTQ-like one-level moves
    moved = dataclasses.replace(init, quantized={**init.quantized, name: dataclasses.replace(q, qdata=codes)})
    student = QATStudent(tiny, moved, QATConfig(seq_len=SEQ_LEN, top_k=8))
    assert _same_integers(student.to_checkpoint(moved, {}), moved)
    w = float_weights(tiny)[name]
    latent = student.quantized[name].latent.detach()
    assert torch.equal(latent[1:], w[1:]) and torch.equal(latent[0, 7:], w[0, 7:])
    assert torch.equal(latent[0, :7], moved.quantized[name].dequantize()[0, :7].float())


def test_top_k_covering_the_vocabulary_is_the_full_kl(tiny):
    init = quantize_model(tiny, PRESETS["int4-block32"], progress=False)
    student = QATStudent(tiny, init, QATConfig(seq_len=SEQ_LEN))
    tokens = torch.tensor(_sequences(tiny, 1))
    full = student.loss(tokens, teacher_target(tiny.model, tokens, 0))
    all_k = student.loss(tokens, teacher_target(tiny.model, tokens, tiny.config.vocab_size))
    assert full.item() > 0
    assert all_k.item() == pytest.approx(full.item(), rel=1e-4)


def test_qat_lowers_the_distillation_loss_and_kl_to_float(tiny, tmp_path):
    init = quantize_model(tiny, PRESETS["int4-channel"], progress=False)
    seqs = _sequences(tiny, 2)
    cfg = QATConfig(steps=30, seq_len=SEQ_LEN, lr=1e-3, scale_lr=1e-2, top_k=0, warmup=2)
    trained = train(tiny, init, seqs, cfg, tmp_path / "state", progress=False)
    tokens = [t for s in seqs for t in s[1:]]
    before = evaluate(init.build_model(64), tokens, SEQ_LEN, reference=tiny.model, progress=False)
    after = evaluate(trained.build_model(64), tokens, SEQ_LEN, reference=tiny.model, progress=False)
    assert after.kl_to_float < 0.5 * before.kl_to_float
    assert trained.provenance["final_loss"] < 0.5 * trained.provenance["first_loss"]
    assert not _same_integers(trained, init)


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tiny, tmp_path, monkeypatch):
    init = quantize_model(tiny, PRESETS["int4-block32"], progress=False)
    cfg = QATConfig(steps=6, seq_len=SEQ_LEN, lr=1e-3, scale_lr=1e-2, top_k=8, save_every=3, warmup=2)
    save = qat.save_state

    def save_and_keep_step_3(run_dir, step, *args):
        save(run_dir, step, *args)
        if step == 3:  # what an interrupted run leaves behind
            shutil.copytree(run_dir, tmp_path / "interrupted")

    monkeypatch.setattr(qat, "save_state", save_and_keep_step_3)
    whole = train(tiny, init, _sequences(tiny), cfg, tmp_path / "state", progress=False)
    monkeypatch.setattr(qat, "save_state", save)
    cfg2, meta, state = qat.load_run(tmp_path / "interrupted")
    assert (cfg2, meta, state["step"]) == (cfg, {"recipe": "int4-block32"}, 3)
    resumed = train(tiny, init, None, cfg2, tmp_path / "interrupted", resume=state, progress=False)
    assert _same_integers(resumed, whole)
    assert not _same_integers(whole, init)


def _grid_checkpoint(tmp_path, off_grid: bool = False):
    """A tiny HF checkpoint whose int4-block32 weights were put on a Q4_0 grid, as QAT releases are."""
    config = tiny_config()
    state = random_state_dict(config, seed=3)
    g = torch.Generator().manual_seed(4)
    scales = {}
    for name, w in state.items():
        if name.endswith("_proj.weight"):
            rows, cols = w.shape
            d = (torch.rand(rows, cols // 32, generator=g) * 0.02 + 0.005).to(torch.bfloat16).float()
            d = d * torch.where(torch.rand(rows, cols // 32, generator=g) < 0.5, -1.0, 1.0)
            q = torch.randint(-7, 8, (rows, cols // 32, 32), generator=g).float()
            q[..., 5] = -8  # Q4_0: the block's largest-magnitude weight is at -8
            state[name] = (q * d[..., None]).reshape(rows, cols).to(torch.bfloat16).float()
            scales[name] = d
    if off_grid:
        state["layers.2.mlp.up_proj.weight"][3, 40] += 0.3 * scales["layers.2.mlp.up_proj.weight"][3, 1].abs()
    folder = tmp_path / ("off" if off_grid else "grid")
    folder.mkdir()
    write_hf_folder(folder, config, state, tiny_tokenizer_model())
    return folder, scales


def test_grid_import_recovers_the_exact_scales(tmp_path):
    folder, scales = _grid_checkpoint(tmp_path)
    loaded = load(folder, progress=False)
    ckpt = import_grid(loaded, GRID_RECIPE, progress=False)
    for name, d in scales.items():
        assert torch.equal(ckpt.quantized[name].scale, d), name
        # q * d is the grid value; the checkpoint stores it rounded to bf16
        assert torch.equal(ckpt.quantized[name].dequantize().bfloat16().float(), loaded.model.state_dict()[name]), name
    assert ckpt.provenance["method"] == "grid-import"
    saved = QuantizedCheckpoint.load(ckpt.save(tmp_path / "imported"))
    assert all(torch.equal(saved.quantized[n].scale, d) for n, d in scales.items())  # negative bf16 scales survive


def test_off_grid_weights_are_refused(tmp_path):
    folder, _ = _grid_checkpoint(tmp_path, off_grid=True)
    loaded = load(folder, progress=False)
    with pytest.raises(GemmaEdgeError, match=r"layers.2.mlp.up_proj.weight: 1 of 8192 weights are not on an int4 "
                                             r"block-32 grid \(first in row 3, block 1\)"):
        import_grid(loaded, GRID_RECIPE, progress=False)  # the one tensor off its grid (the table is on none)
    with pytest.raises(GemmaEdgeError, match="not on an int4 block-32 grid"):  # PTQ-style random weights
        grid_qtensor(torch.randn(4, 64), QuantFormat.parse("int4_block32"), "w")


def test_cli_qat_trains_on_the_built_in_text_and_samples_without_data(tmp_path, capsys):
    """Without --data QAT cuts half its sequences from `training_documents()` (prose, chat turns, code; nothing
    of the held-out domains) and interleaves them with as many the float model writes from the multilingual
    requests, in order; --sampled sets how many, and is refused beside --data."""
    from gemma_edge.calibration.data import sample_sequences, token_sequences, training_documents

    model = write_tiny_checkpoint(tmp_path / "tiny")
    args = ["qat", str(model), "--recipe", "int4-block32", "--steps", "2", "--seq-len", "16", "--sequences", "6"]
    assert main(args + ["--out", str(tmp_path / "q")]) in (0, None)
    used = qat.load_run(tmp_path / "q.qat-state")[2]["sequences"].tolist()
    loaded = load(model, max_seq_len=16)
    assert used[0::2] == token_sequences(training_documents(), loaded.tokenizer, 16, 3)
    assert used[1::2] == sample_sequences(loaded, 3, 16, seed=0, progress=False)
    assert len({tuple(s) for s in used}) == 6

    assert main(args + ["--sampled", "0", "--out", str(tmp_path / "q0")]) in (0, None)
    assert qat.load_run(tmp_path / "q0.qat-state")[2]["sequences"].tolist() == token_sequences(
        training_documents(), loaded.tokenizer, 16, 6)
    text = tmp_path / "train.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    assert main(args + ["--sampled", "2", "--data", str(text), "--out", str(tmp_path / "q2")]) == 2
    assert "--sampled applies to the built-in training text" in capsys.readouterr().err


def test_cli_qat_starts_from_what_quantize_makes(tmp_path):
    """Without --init the student starts at `gemma-edge quantize`'s checkpoint of the recipe (GPTQ on
    data-free samples), not at a nearest rounding of its own."""
    import argparse

    from gemma_edge.cli.calibration_commands import _qat_init
    from gemma_edge.calibration.recipe import QuantRecipe
    from gemma_edge.pipeline.build import quantize

    model = write_tiny_checkpoint(tmp_path / "tiny")
    recipe = QuantRecipe.load("int4-block32")
    assert recipe.rounding == "gptq"
    init = _qat_init(argparse.Namespace(init=None, model=str(model), out=str(tmp_path / "q")), recipe, progress=False)
    assert _same_integers(init, QuantizedCheckpoint.load(quantize(model, tmp_path / "ptq", recipe, progress=False)))
    assert not list(tmp_path.glob(".qat-init-*"))


def test_cli_qat_writes_a_checkpoint_and_resumes(tmp_path, capsys):
    model = write_tiny_checkpoint(tmp_path / "tiny")
    text = tmp_path / "train.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    args = ["qat", str(model), "--recipe", "int4-block32", "--steps", "4", "--seq-len", "16", "--save-every", "2",
            "--data", str(text), "--out", str(tmp_path / "q")]
    assert main(args) in (0, None)
    ckpt = QuantizedCheckpoint.load(tmp_path / "q")
    assert ckpt.provenance["method"] == "qat" and ckpt.provenance["config"]["steps"] == 4
    assert load(tmp_path / "q", max_seq_len=32).model is not None
    state = tmp_path / "q.qat-state"
    assert qat.load_run(state)[2]["step"] == 4
    again = args[:-1] + [str(tmp_path / "q2"), "--resume", str(state)]
    assert main(again) in (0, None)
    assert _same_integers(QuantizedCheckpoint.load(tmp_path / "q2"), ckpt)
    assert main(args[:5] + ["8"] + args[6:-1] + [str(tmp_path / "q3"), "--resume", str(state)]) == 2
    assert "--steps 8 differs from the resumed run's 4" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["qat", "grid-import"])
def test_onnx_export_of_a_qat_or_imported_checkpoint_passes_parity(tmp_path, source):
    from gemma_edge.export.onnx import export_onnx
    from gemma_edge.runtimes.parity import run_parity

    if source == "qat":
        loaded = load(write_tiny_checkpoint(tmp_path / "tiny"), max_seq_len=64, progress=False)
        init = quantize_model(loaded, PRESETS["int4-block32"], progress=False)
        cfg = QATConfig(steps=4, seq_len=SEQ_LEN, lr=1e-3, scale_lr=1e-2, top_k=8, warmup=1)
        ckpt = train(loaded, init, _sequences(loaded), cfg, tmp_path / "state", progress=False)
        assert not _same_integers(ckpt, init)
    else:  # negative Q4_0 scales go through the exporter as they are
        folder, _ = _grid_checkpoint(tmp_path)
        ckpt = import_grid(load(folder, progress=False), GRID_RECIPE, progress=False)
        assert any((q.scale < 0).any() for q in ckpt.quantized.values())
    saved = ckpt.save(tmp_path / "q")
    report = run_parity(export_onnx(saved, tmp_path / "onnx", max_seq_len=128))
    assert report.passed, report.failures
    assert report.gate == "fidelity.weight_only"


def test_pte_export_refuses_negative_grid_scales_with_a_clear_error(tmp_path):
    from gemma_edge.export.executorch import export_pte

    folder, _ = _grid_checkpoint(tmp_path)
    saved = import_grid(load(folder, progress=False), GRID_RECIPE, progress=False).save(tmp_path / "q")
    with pytest.raises(GemmaEdgeError, match="blocks have negative scales .* XNNPACK accepts only positive ones"):
        export_pte(saved, tmp_path / "pte", max_seq_len=64)
    assert not (tmp_path / "pte").exists()


def _torchrun(args: list[str], tmp: Path) -> None:
    """`torchrun --standalone --nproc-per-node 2 -m gemma_edge.cli.main ARGS`: two gloo processes (torchrun's
    log folders go to `tmp`)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "gemma_edge.cli.main", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp)})
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_torchrun_processes_follow_one_process_with_the_same_batch_and_resume_exactly(tmp_path, monkeypatch):
    """DDP over gloo: each process trains half of every step's 4 sequences; the loss curve and the trained
    integers match one process with --batch 4 (float summation order aside), and a two-process run resumed
    from a state the one-process run left at step 3 ends where the uninterrupted two-process run ends."""
    model = write_tiny_checkpoint(tmp_path / "tiny")
    text = tmp_path / "train.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. " * 30)
    args = ["qat", str(model), "--recipe", "int4-block32", "--steps", "6", "--batch", "4", "--seq-len", "16",
            "--save-every", "3", "--lr", "1e-3", "--scale-lr", "1e-2", "--data", str(text), "--out"]
    save = qat.save_state

    def save_and_keep_step_3(run_dir, step, *rest):
        save(run_dir, step, *rest)
        if step == 3:
            shutil.copytree(run_dir, tmp_path / "interrupted")

    monkeypatch.setattr(qat, "save_state", save_and_keep_step_3)
    assert main(args + [str(tmp_path / "one")]) in (0, None)
    _torchrun(args + [str(tmp_path / "two")], tmp_path)
    _torchrun(args + [str(tmp_path / "resumed"), "--resume", str(tmp_path / "interrupted")], tmp_path)

    one, two, resumed = (qat.load_run(tmp_path / name)[2] for name in ("one.qat-state", "two.qat-state", "interrupted"))
    assert len(one["losses"]) == len(two["losses"]) == 6
    assert torch.allclose(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=0)
    assert two["losses"][-1] < two["losses"][0]  # it trained
    for name, p in one["params"].items():
        assert torch.allclose(two["params"][name], p, rtol=1e-4, atol=1e-6), name
    assert resumed["losses"] == two["losses"] and resumed["step"] == 6
    assert _same_integers(QuantizedCheckpoint.load(tmp_path / "resumed"), QuantizedCheckpoint.load(tmp_path / "two"))


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
    assert list(Processes(rank=1, world=2).share(4)) == [1, 3]
    with pytest.raises(GemmaEdgeError, match="--batch 3 does not split evenly over 2 processes"):
        Processes(rank=0, world=2).share(3)

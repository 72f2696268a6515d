"""A hostile user's inputs: every case answers exit 2 (bad input) or 1 (failed verdict) with one line naming
the file and the fix, deletes nothing that existed, never crashes, and leaves no `.partial` behind."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gemma_edge.cli.main import main
from gemma_edge.model import GemmaEdgeError
from gemma_edge.model.digest import content_digest
from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint

W = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return write_tiny_checkpoint(root / "tiny", tiny_config(num_layers=2, sliding_window=W))


@pytest.fixture(scope="module")
def onnx_dir(tiny, tmp_path_factory):
    from gemma_edge.pipeline.build import export

    return export(tiny, tmp_path_factory.mktemp("hostile-onnx") / "onnx", "onnx", max_seq_len=128, cache=False)


def run(capsys, *argv) -> tuple[int, str]:
    """(exit code, stderr) of the CLI in this process; an uncaught exception fails the test."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err.strip()


def one_line(err: str, *words: str) -> None:
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def no_partials(*folders: Path) -> None:
    for folder in folders:
        assert not [p for p in Path(folder).iterdir() if p.name.endswith((".partial", ".old"))], folder


def copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


# ---- 1. data loss ----------------------------------------------------------------------------------

def test_eval_report_never_replaces_the_model_a_file_or_the_working_directory(tiny, tmp_path, capsys, monkeypatch):
    model = copy(tiny, tmp_path / "model")
    before = content_digest(model)
    rc, err = run(capsys, "eval", model, "--report", model, "--seq-len", 16)
    assert rc == 2 and content_digest(model) == before
    one_line(err, "is the input", "choose another output path")
    note = tmp_path / "notes.txt"
    note.write_text("mine")
    rc, err = run(capsys, "eval", model, "--report", note, "--seq-len", 16)
    assert rc == 2 and note.read_text() == "mine"
    one_line(err, "notes.txt", "is a file")
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("keep")
    monkeypatch.chdir(work)
    for target in (".", str(tmp_path)):
        rc, err = run(capsys, "eval", model, "--report", target, "--overwrite", "--seq-len", 16)
        assert rc == 2 and (work / "keep.txt").read_text() == "keep"
        one_line(err, "current directory")
    no_partials(tmp_path, work)


def test_an_empty_output_path_is_refused_even_with_overwrite(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("keep")
    for command in (["convert", tiny], ["export", "onnx", tiny], ["quantize", tiny, "--recipe", "int4-channel"]):
        rc, err = run(capsys, *command, "--out", "", "--overwrite")
        assert rc == 2
        one_line(err, "output path is empty")
    assert (tmp_path / "keep.txt").read_text() == "keep"


def test_the_quickstart_writes_only_into_its_own_folder(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    rc, err = run(capsys, "quickstart", "--out", mine)
    assert rc == 2 and (mine / "notes.txt").read_text() == "mine" and len(list(mine.iterdir())) == 1
    one_line(err, "not a gemma-edge quickstart folder")
    monkeypatch.chdir(tmp_path)
    rc, err = run(capsys, "quickstart", "--out", ".")
    assert rc == 2
    one_line(err, "current directory")


def test_a_failed_swap_keeps_the_old_output_and_leaves_no_partial(tmp_path, monkeypatch):
    from gemma_edge.model import atomic

    out = tmp_path / "out"
    with atomic.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    real_replace = os.replace

    def failing(src, dst):
        if str(src).endswith(".partial"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing)
    with pytest.raises(GemmaEdgeError, match="out: could not write the output .*No space left"):
        with atomic.atomic_dir(out, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "old"
    no_partials(tmp_path)


def test_outputs_under_proc_below_a_file_or_over_the_input_are_refused(tiny, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [("/proc/gemma-edge-out", "cannot create"), (tmp_path / "file" / "out", "is a file, not a folder"),
             (tiny, "is the input"), (tiny.parent, "holding the input")]
    for out, words in cases:
        rc, err = run(capsys, "convert", tiny, "--out", out, "--overwrite", "--no-cache")
        assert rc == 2, out
        one_line(err, words)
    assert (tmp_path / "file").read_text() == "x" and (tiny / "model.safetensors").exists()


# ---- 2. a wrong artifact must not pass -------------------------------------------------------------

def test_an_export_of_another_checkpoint_fails_parity(tiny, onnx_dir, tmp_path, capsys):
    from gemma_edge.pipeline.build import export

    other = write_tiny_checkpoint(tmp_path / "other", tiny_config(num_layers=2, sliding_window=W), seed=7)
    wrong = export(other, tmp_path / "wrong", "onnx", max_seq_len=128, cache=False)
    rc, _ = run(capsys, "parity", wrong, "--against", "float", "--source", tiny, "--no-cache")
    assert rc == 1
    rc, _ = run(capsys, "parity", wrong, "--source", tiny, "--no-cache", "--report", tmp_path / "r")
    assert rc == 1
    failures = json.loads((tmp_path / "r" / "parity.json").read_text())["failures"]
    assert any("not the checkpoint this artifact was exported from" in f for f in failures)


def test_a_report_that_checked_nothing_fails(onnx_dir, tmp_path, capsys):
    short = tmp_path / "short.json"
    short.write_text(json.dumps(["hi"]))  # too few positions for a loss statistic
    rc, _ = run(capsys, "parity", onnx_dir, "--against", "float", "--prompts", short, "--no-cache",
                "--report", tmp_path / "r")
    assert rc == 1
    failures = json.loads((tmp_path / "r" / "quantization_loss.json").read_text())["failures"]
    assert any(f.startswith("nothing was checked") for f in failures)


# ---- 3. integrity ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.onnx", "model.onnx.data", "tokenizer.model", "genai_config.json",
                                  "manifest.json"])
def test_a_changed_file_is_named_by_parity_bench_and_run(onnx_dir, tmp_path, capsys, name):
    folder = copy(onnx_dir, tmp_path / "art")
    path = folder / name
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x20
    path.write_bytes(bytes(data))
    for argv in (["parity", folder, "--no-cache"], ["bench", folder, "--runs", "1", "--prompt-len", "4",
                                                    "--decode-tokens", "2"],
                 ["run", folder, "--prompt", "hi", "--max-new-tokens", "2"]):
        rc, err = run(capsys, *argv)
        assert rc == 2, argv
        one_line(err, "manifest.json" if name == "manifest.json" else name, "export")


def test_a_missing_data_file_is_named(onnx_dir, tmp_path, capsys):
    folder = copy(onnx_dir, tmp_path / "art")
    (folder / "model.onnx.data").unlink()
    rc, err = run(capsys, "parity", folder, "--no-cache")
    assert rc == 2
    one_line(err, "model.onnx.data: missing")


def test_no_verify_uses_an_edited_folder(onnx_dir, tmp_path, capsys):
    folder = copy(onnx_dir, tmp_path / "art")
    config = json.loads((folder / "genai_config.json").read_text())
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4))  # same content, other bytes
    assert run(capsys, "parity", folder, "--no-cache")[0] == 2
    assert run(capsys, "parity", folder, "--no-cache", "--no-verify")[0] == 0


def test_random_byte_flips_are_always_caught(onnx_dir, tmp_path, capsys):
    """Property: a flipped byte anywhere in the folder never passes and never crashes."""
    rng = random.Random(0)
    names = sorted(p.name for p in onnx_dir.iterdir())
    for trial in range(12):
        folder = copy(onnx_dir, tmp_path / f"t{trial}")
        path = folder / rng.choice(names)
        data = bytearray(path.read_bytes())
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        rc, err = run(capsys, "parity", folder, "--no-cache")
        assert rc in (1, 2), (path.name, rc)
        one_line(err) if rc == 2 else None


# ---- 4. damage fails the verdict instead of crashing the harness -------------------------------------

def _flip_exponent_of_a_weight(folder: Path) -> None:
    data = bytearray((folder / "model.onnx.data").read_bytes())
    for i in range(3, len(data), 4 * 997):  # the high byte of float32 values: huge magnitudes
        data[i] ^= 0x40
    (folder / "model.onnx.data").write_bytes(bytes(data))


def test_overflowing_weights_fail_the_verdict(onnx_dir, tmp_path, capsys):
    folder = copy(onnx_dir, tmp_path / "art")
    _flip_exponent_of_a_weight(folder)
    rc, _ = run(capsys, "parity", folder, "--no-cache", "--no-verify", "--report", tmp_path / "r")
    assert rc == 1
    assert json.loads((tmp_path / "r" / "parity.json").read_text())["failures"]


def test_truncated_onnx_data_fails_the_verdict(onnx_dir, tmp_path, capsys):
    folder = copy(onnx_dir, tmp_path / "art")
    data = folder / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    rc, _ = run(capsys, "parity", folder, "--no-cache", "--no-verify", "--report", tmp_path / "r")
    assert rc == 1
    failures = json.loads((tmp_path / "r" / "parity.json").read_text())["failures"]
    assert any("cannot load" in f for f in failures)


def test_random_bytes_as_a_pte_fail_without_crashing(onnx_dir, tmp_path, capsys):
    folder = copy(onnx_dir, tmp_path / "art")
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in ("model.onnx", "model.onnx.data"):
        (folder / name).unlink()
    (folder / "model.pte").write_bytes(random.Random(1).randbytes(4096))
    manifest.update(artifact="model.pte", runtime="executorch")
    manifest["metadata"]["get_max_seq_len"] = 128
    (folder / "manifest.json").write_text(json.dumps(manifest))
    rc, err = run(capsys, "parity", folder, "--no-cache", "--no-verify", "--report", tmp_path / "r")
    assert rc == 1
    failures = json.loads((tmp_path / "r" / "parity.json").read_text())["failures"]
    assert any("not an ExecuTorch program" in f for f in failures)
    rc, err = run(capsys, "bench", folder, "--no-verify", "--runs", "1")
    assert rc == 2
    one_line(err, "model.pte")


def test_a_runtime_killed_by_a_signal_is_named_in_one_line(onnx_dir, capsys, monkeypatch):
    """A runtime built for another processor dies with SIGILL (seen with a native llama.cpp build): the bench
    names the signal instead of the last line the runtime happened to log."""
    from gemma_edge.runtimes import bench

    def killed(args, **kwargs):
        return subprocess.CompletedProcess(args, -signal.SIGILL, "", "llama_kv_cache: using full-size SWA cache\n")

    monkeypatch.setattr(bench.subprocess, "run", killed)
    rc, err = run(capsys, "bench", onnx_dir, "--runs", "1")
    assert rc == 2
    one_line(err, str(onnx_dir), "signal 4", "SIGILL")


@pytest.mark.parametrize("content", ["not json {", "[1, 2]", '{"artifact": 3}'])
def test_a_damaged_manifest_is_one_line(onnx_dir, tmp_path, capsys, content):
    folder = copy(onnx_dir, tmp_path / "art")
    (folder / "manifest.json").write_text(content)
    for argv in (["parity", folder, "--no-cache"], ["bench", folder], ["run", folder, "--prompt", "hi"]):
        rc, err = run(capsys, *argv)
        assert rc == 2, argv
        one_line(err, "manifest.json", "export")


def test_an_export_shorter_than_the_window_and_the_prompts(tiny, tmp_path, capsys):
    """A context shorter than the sliding window exports (genai requires a window within the context) and
    parity cuts its passage to fit, naming any prompt that cannot."""
    out = tmp_path / "short"
    assert run(capsys, "export", "onnx", tiny, "--out", out, "--max-seq-len", 40, "--no-cache")[0] == 0
    rc, _ = run(capsys, "parity", out, "--no-cache", "--report", tmp_path / "r")
    report = json.loads((tmp_path / "r" / "parity.json").read_text())
    assert rc == (0 if report["passed"] else 1)
    assert all(p["tokens"] + 32 <= 40 for p in report["prompts"])


# ---- 5. one line, not a traceback ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.model"])
def test_a_folder_where_a_file_belongs(tiny, tmp_path, capsys, name):
    model = copy(tiny, tmp_path / "m")
    (model / name).unlink()
    (model / name).mkdir()
    rc, err = run(capsys, "run", model, "--prompt", "hi", "--max-new-tokens", "2")
    assert rc == 2
    one_line(err, name, "folder")


@pytest.mark.parametrize("edit, words", [
    (lambda d: [d], "JSON list"),
    (lambda d: {**d, "num_key_value_heads": 0}, "num_kv_heads=0 must be a positive integer"),
    (lambda d: {**d, "hidden_size": -64}, "hidden_size=-64 must be a positive integer"),
    (lambda d: {**d, "hidden_size": 64.7}, "hidden_size=64.7 must be an integer"),
    (lambda d: {**d, "model_type": "llama"}, "model_type 'llama' is not Gemma 3"),
])
def test_bad_config_values(tiny, tmp_path, capsys, edit, words):
    model = copy(tiny, tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(edit(config)))
    rc, err = run(capsys, "run", model, "--prompt", "hi")
    assert rc == 2
    one_line(err, "config.json", words)


def test_a_binary_config(tiny, tmp_path, capsys):
    model = copy(tiny, tmp_path / "m")
    (model / "config.json").write_bytes(b"\xff\xfe\x00binary")
    rc, err = run(capsys, "run", model, "--prompt", "hi")
    assert rc == 2
    one_line(err, "config.json", "not valid JSON")


@pytest.mark.parametrize("args, words", [
    (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"), (["--temperature", "nan"], "--temperature"),
    (["--temperature", "-1"], "--temperature"), (["--max-seq-len", "-5"], "--max-seq-len"),
    (["--max-seq-len", "0"], "--max-seq-len"), (["--threads", "-1"], "--threads"),
    (["--seed", str(2**70)], "--seed"), (["--max-new-tokens", "-5"], "--max-new-tokens"),
    (["--prompt", "caf\udce9"], "--prompt"),
])
def test_bad_arguments_are_one_line(tiny, capsys, args, words):
    argv = ["run", tiny] + (args if "--prompt" in args else ["--prompt", "hi"] + args)
    rc, err = run(capsys, *argv)
    assert rc == 2
    one_line(err, words, "--help")


def test_a_corrupt_stats_folder(tiny, tmp_path, capsys):
    stats = tmp_path / "stats"
    stats.mkdir()
    (stats / "stats.json").write_text("{ not json")
    (stats / "importance.safetensors").write_bytes(b"\x00" * 64)
    rc, err = run(capsys, "quantize", tiny, "--recipe", "int4-channel", "--stats", stats, "--out", tmp_path / "q",
                  "--no-cache")
    assert rc == 2 and not (tmp_path / "q").exists()
    one_line(err, "stats", "gemma-edge calibrate")


def test_a_pickled_qat_state_is_refused_without_advice_to_unpickle(tiny, tmp_path, capsys):
    import torch

    state = tmp_path / "q.qat-state"
    state.mkdir()
    (state / "qat_run.json").write_text(json.dumps({"config": {}, "meta": {}}))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, state / "qat_state.pt")
    rc, err = run(capsys, "qat", tiny, "--recipe", "int4-channel", "--steps", 1, "--out", tmp_path / "q",
                  "--resume", state)
    assert rc == 2
    one_line(err, "q.qat-state", "without --resume")
    assert "weights_only" not in err


def test_a_full_disk(tiny, tmp_path):
    """ulimit -f: the write fails part-way; one line, nothing half-written left."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run([sys.executable, "-m", "gemma_edge.cli.main", "convert", str(tiny), "--out",
                           str(tmp_path / "out"), "--no-cache"], capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    one_line(proc.stderr.strip(), "out")
    assert not (tmp_path / "out").exists()
    no_partials(tmp_path)


# ---- 6. a tokenizer.model without a BOS id ---------------------------------------------------------

def test_a_tokenizer_without_bos_takes_it_from_config(tiny, tmp_path, capsys):
    from sentencepiece import sentencepiece_model_pb2 as sp_pb

    from gemma_edge.model import Tokenizer

    model = copy(tiny, tmp_path / "m")
    proto = sp_pb.ModelProto()
    proto.ParseFromString((model / "tokenizer.model").read_bytes())
    proto.trainer_spec.bos_id = -1
    proto.pieces[2].type = sp_pb.ModelProto.SentencePiece.USER_DEFINED
    (model / "tokenizer.model").write_bytes(proto.SerializeToString())
    assert Tokenizer((model / "tokenizer.model").read_bytes()).bos_id == -1
    with pytest.raises(GemmaEdgeError, match="has no <bos> id"):
        Tokenizer((model / "tokenizer.model").read_bytes()).encode("hi")
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 20)
    rc, err = run(capsys, "calibrate", model, "--calib", text, "--seq-len", 16, "--samples", 2, "--out",
                  tmp_path / "calib")
    assert rc == 0, err
    assert run(capsys, "run", model, "--prompt", "hi", "--max-new-tokens", "2")[0] == 0


# ---- 7. litter ------------------------------------------------------------------------------------

KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from gemma_edge.cli.main import main
    from gemma_edge.model import hf_checkpoint, loader

    real = hf_checkpoint.write_hf_folder

    def dying(folder, *args, **kwargs):
        real(folder, *args, **kwargs)  # the files are there, then the process is told to stop
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))

    loader.write_hf_folder = dying
    sys.exit(main(["convert", sys.argv[2], "--out", sys.argv[3], "--no-cache"]))
""")


def test_sigterm_removes_the_partial_and_sigkill_leaves_one_the_next_run_removes(tiny, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    outs = tmp_path / "outs"
    outs.mkdir()
    proc = subprocess.run([sys.executable, str(script), "SIGTERM", str(tiny), str(outs / "a")], capture_output=True,
                          text=True)
    assert proc.returncode == 130 and "interrupted" in proc.stderr
    assert not (outs / "a").exists()
    no_partials(outs)
    proc = subprocess.run([sys.executable, str(script), "SIGKILL", str(tiny), str(outs / "b")])
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in outs.iterdir() if p.name.endswith(".partial")]  # a killed process cannot clean up
    assert main(["convert", str(tiny), "--out", str(outs / "c"), "--no-cache"]) == 0
    no_partials(outs)
    assert sorted(p.name for p in outs.iterdir()) == ["c"]

"""The build cache: a key covers every input, a damaged entry is rebuilt, concurrent builders leave one good
entry, and a restored output is the same as a fresh build."""

import json
import subprocess
import sys
import textwrap

import pytest

from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint
from gemma_edge.pipeline import build as pipeline
from gemma_edge.pipeline.cache import BuildCache


class Counting(BuildCache):
    """A cache that counts the stages it had to run."""

    def __init__(self, root):
        super().__init__(root)
        self.built: list[str] = []

    def _store(self, key, stage, inputs, make):
        self.built.append(stage)
        return super()._store(key, stage, inputs, make)


@pytest.fixture
def store(tmp_path):
    return Counting(tmp_path / "cache")


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_checkpoint(tmp_path / "tiny", tiny_config(num_layers=2))


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_hit_restores_what_a_fresh_build_writes(store, tiny, tmp_path):
    fresh = pipeline.export(tiny, tmp_path / "fresh", "onnx", max_seq_len=32, cache=False)
    first = pipeline.export(tiny, tmp_path / "first", "onnx", max_seq_len=32, cache=store)
    again = pipeline.export(tiny, tmp_path / "again", "onnx", max_seq_len=32, cache=store)
    assert store.built == ["export-onnx"]
    assert _files(first) == _files(fresh) == _files(again)


def test_the_recorded_source_follows_the_source_that_was_asked_for(store, tiny, tmp_path):
    """The same content elsewhere hits the cache; the restored manifest names the new place, as a fresh
    export from there would."""
    import shutil

    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(tiny, moved)
    pipeline.export(tiny, tmp_path / "a", "onnx", max_seq_len=32, cache=store)
    restored = pipeline.export(moved, tmp_path / "b", "onnx", max_seq_len=32, cache=store)
    fresh = pipeline.export(moved, tmp_path / "c", "onnx", max_seq_len=32, cache=False)
    assert store.built == ["export-onnx"]
    assert json.loads((restored / "manifest.json").read_text())["source"]["path"] == str(moved.resolve())
    assert _files(restored) == _files(fresh)
    q1 = pipeline.quantize(tiny, tmp_path / "q1", "int4-channel", cache=store, progress=False)
    q2 = pipeline.quantize(moved, tmp_path / "q2", "int4-channel", cache=store, progress=False)
    assert store.built == ["export-onnx", "quantize", "calibrate"]  # the checkpoint, which makes its data-free statistics
    assert json.loads((q2 / "source.json").read_text())["path"] == str(moved.resolve())
    assert (q1 / "model.safetensors").read_bytes() == (q2 / "model.safetensors").read_bytes()


def test_a_changed_source_recipe_or_option_misses(store, tiny, tmp_path):
    pipeline.quantize(tiny, tmp_path / "q", "int4-channel", cache=store, progress=False)
    pipeline.quantize(tiny, tmp_path / "q-again", "int4-channel", cache=store, progress=False)
    assert store.built == ["quantize", "calibrate"]
    pipeline.quantize(tiny, tmp_path / "q-block", "int4-block32", cache=store, progress=False)  # recipe
    assert store.built == ["quantize", "calibrate", "quantize"]  # one model's statistics serve every recipe
    pipeline.export(tiny, tmp_path / "e32", "onnx", max_seq_len=32, cache=store)
    pipeline.export(tiny, tmp_path / "e64", "onnx", max_seq_len=64, cache=store)  # option
    assert store.built == ["quantize", "calibrate", "quantize"] + ["export-onnx"] * 2
    other = write_tiny_checkpoint(tmp_path / "other", tiny_config(num_layers=2), seed=1)  # source content
    pipeline.export(other, tmp_path / "e-other", "onnx", max_seq_len=32, cache=store)
    assert store.built[-1] == "export-onnx" and len(store.built) == 6


def test_a_change_to_gemma_edge_code_or_a_library_version_misses(store, tiny, tmp_path, monkeypatch):
    from gemma_edge.pipeline import cache

    pipeline.convert(tiny, tmp_path / "a", cache=store, progress=False)
    monkeypatch.setattr(cache, "code_digest", lambda packages: "edited")
    pipeline.convert(tiny, tmp_path / "b", cache=store, progress=False)
    env = dict(cache.environment())
    monkeypatch.setattr(cache, "environment", lambda: {**env, "libraries": {**env["libraries"], "torch": "9.9"}})
    pipeline.convert(tiny, tmp_path / "c", cache=store, progress=False)
    assert store.built == ["convert"] * 3


def test_the_key_covers_every_gemma_edge_source_file(tmp_path, monkeypatch):
    """code_digest hashes the package files themselves: editing one changes it."""
    import shutil

    import gemma_edge.pipeline.cache as cache

    before = cache.code_digest()
    cache.code_digest.cache_clear()
    root = tmp_path / "pkg"
    for package in cache.PACKAGES:
        shutil.copytree(cache._package_dir(package), root / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "_package_dir", lambda package: root / package)
    assert cache.code_digest() == before
    cache.code_digest.cache_clear()
    (root / "export" / "onnx.py").write_text((root / "export" / "onnx.py").read_text() + "\n# edited\n")
    assert cache.code_digest() != before
    cache.code_digest.cache_clear()


def test_a_stage_is_keyed_by_the_code_it_depends_on(store, tiny, tmp_path, monkeypatch):
    """Editing the runtimes (downstream of export) leaves exports cached; editing export/ does not."""
    from gemma_edge.pipeline import cache

    real = cache.code_digest
    pipeline.export(tiny, tmp_path / "a", "onnx", max_seq_len=32, cache=store)
    monkeypatch.setattr(cache, "code_digest", lambda packages: real(packages) + ("x" if "runtimes" in packages else ""))
    pipeline.export(tiny, tmp_path / "b", "onnx", max_seq_len=32, cache=store)
    assert store.built == ["export-onnx"]
    monkeypatch.setattr(cache, "code_digest", lambda packages: real(packages) + ("x" if "export" in packages else ""))
    pipeline.export(tiny, tmp_path / "c", "onnx", max_seq_len=32, cache=store)
    assert store.built == ["export-onnx"] * 2


def test_a_flipped_byte_in_a_stored_output_is_detected_and_rebuilt(store, tiny, tmp_path):
    first = pipeline.export(tiny, tmp_path / "a", "onnx", max_seq_len=32, cache=store)
    built = (first / "model.onnx.data").read_bytes()
    stored = next(store.root.glob("??/*/output/model.onnx.data"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    again = pipeline.export(tiny, tmp_path / "b", "onnx", max_seq_len=32, cache=store)
    assert store.built == ["export-onnx"] * 2
    assert (again / "model.onnx.data").read_bytes() == built


def test_a_restored_output_shares_large_files_with_the_entry_and_an_edit_to_one_is_caught(store, tiny, tmp_path,
                                                                                          monkeypatch):
    """Large files are hard links (the disk holds a build once), metadata is copied, and so is ONNX external
    data (onnx.load refuses a data file with two links); writing into a restored file in place reaches the
    entry, whose next hit re-hashes, deletes it and builds again."""
    import onnx

    from gemma_edge.pipeline import cache

    monkeypatch.setattr(cache, "LINK_BYTES", 4096)
    first = pipeline.export(tiny, tmp_path / "a", "onnx", max_seq_len=32, cache=store)
    entry = next(store.root.glob("??/*/output"))
    linked, manifest, data = first / "tokenizer.json", first / "manifest.json", first / "model.onnx.data"
    assert linked.stat().st_size >= 4096 > manifest.stat().st_size and data.stat().st_size >= 4096
    assert linked.stat().st_ino == (entry / linked.name).stat().st_ino and linked.stat().st_nlink == 2
    assert manifest.stat().st_ino != (entry / manifest.name).stat().st_ino and data.stat().st_nlink == 1
    onnx.load(str(first / "model.onnx"))  # with its external data
    built = linked.read_bytes()
    with open(linked, "r+b") as f:  # an in-place edit of the user's output
        f.seek(len(built) // 2)
        f.write(bytes([built[len(built) // 2] ^ 0xFF]))
    again = pipeline.export(tiny, tmp_path / "b", "onnx", max_seq_len=32, cache=store)
    assert store.built == ["export-onnx"] * 2
    assert (again / linked.name).read_bytes() == built
    assert linked.read_bytes() != built  # the user's edit stays theirs


def test_a_partial_or_truncated_entry_is_rebuilt(store, tiny, tmp_path):
    pipeline.convert(tiny, tmp_path / "a", cache=store, progress=False)
    (entry,) = store.root.glob("??/*/entry.json")
    entry.unlink()  # a writer that died before finishing its entry
    pipeline.convert(tiny, tmp_path / "b", cache=store, progress=False)
    (entry,) = store.root.glob("??/*/entry.json")
    weights = entry.parent / "output" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    pipeline.convert(tiny, tmp_path / "c", cache=store, progress=False)
    assert store.built == ["convert"] * 3
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()


BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gemma_edge.pipeline.cache import BuildCache

    root, log = Path(sys.argv[1]), Path(sys.argv[2])

    def make(folder):
        with open(log, "a") as f:
            f.write("built\\n")
        folder.mkdir()
        time.sleep(1.0)  # both processes are inside get_or_build at once
        (folder / "out.txt").write_text("the output")

    output, hit = BuildCache(root).get_or_build("demo", {"x": 1}, make)
    print(hit, (output / "out.txt").read_text())
""")


def test_two_processes_building_one_key_leave_one_good_entry(tmp_path):
    script = tmp_path / "builder.py"
    script.write_text(BUILDER)
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(log)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert outs == ["False the output", "True the output"]  # one built, the other waited and hit
    assert log.read_text() == "built\n"
    (entry,) = BuildCache(tmp_path / "cache").entries()
    assert entry.stage == "demo" and not list((tmp_path / "cache" / "tmp").iterdir())


def test_least_recently_used_entries_go_past_the_limit(store, tiny, tmp_path):
    pipeline.convert(tiny, tmp_path / "a", cache=store, progress=False)
    pipeline.export(tiny, tmp_path / "b", "onnx", max_seq_len=32, cache=store)
    assert len(store.entries()) == 2
    assert store.evict(limit=store.entries()[-1].bytes) == 1
    assert [e.stage for e in store.entries()] == ["export-onnx"]


def test_an_entry_in_use_is_neither_evicted_nor_cleared(store, tmp_path):
    """A process restoring from an entry holds it: eviction and `cache clear` pass it by until it is let go."""
    def make(folder):
        folder.mkdir()
        (folder / "x.bin").write_bytes(b"x" * 1000)

    with store.open("demo", {"n": 1}, make) as (held, hit):
        assert not hit
        assert store.evict(limit=0) == 0 and store.clear() == 0
        assert (held / "x.bin").read_bytes() == b"x" * 1000
    assert store.clear() == 1 and store.entries() == []


def test_cache_info_and_clear_from_the_command_line(tmp_path, tiny, monkeypatch, capsys):
    from gemma_edge.cli.main import main

    monkeypatch.setenv("GEMMA_EDGE_CACHE", str(tmp_path / "c"))
    assert main(["convert", str(tiny), "--out", str(tmp_path / "a")]) == 0
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "c" / "builds") in out and "entries: 1" in out and "convert" in out
    assert main(["convert", str(tiny), "--out", str(tmp_path / "b"), "--no-cache"]) == 0
    assert main(["cache", "clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert BuildCache(tmp_path / "c" / "builds").entries() == []


def test_parity_reports_are_cached_by_content(store, tiny, tmp_path):
    folder = pipeline.export(tiny, tmp_path / "onnx", "onnx", max_seq_len=128, cache=store)
    first = pipeline.parity(folder, cache=store)
    again = pipeline.parity(folder, cache=store)
    assert first.passed and again.to_dict() == first.to_dict()
    assert store.built == ["export-onnx", "parity"]
    pipeline.parity(folder, against="float", cache=store)  # another question, another key
    assert store.built == ["export-onnx", "parity", "parity"]


def test_a_statistics_hit_loads_no_model_and_a_large_model_calibrates_in_bfloat16(store, tiny, tmp_path, monkeypatch):
    """The data-free statistics are sampled once per checkpoint: a second quantize takes them from the cache
    without building the float model, unless it rounds with GPTQ, whose Hessians (never cached) need the
    model but not new samples; above BFLOAT16_ABOVE parameters calibration runs in bfloat16."""
    import dataclasses

    import torch

    from gemma_edge.calibration import data
    from gemma_edge.calibration.recipe import PRESETS

    loads, samples = [], []
    real, real_sample = pipeline._load_for_calibration, data.sample_sequences
    monkeypatch.setattr(pipeline, "_load_for_calibration", lambda *a: loads.append(real(*a)) or loads[-1])
    monkeypatch.setattr(data, "sample_sequences", lambda *a, **k: samples.append(1) or real_sample(*a, **k))
    pipeline.quantize(tiny, tmp_path / "a", "int4-block32", cache=store, progress=False)
    nearest = dataclasses.replace(PRESETS["int4-channel"], rounding="nearest")
    pipeline.quantize(tiny, tmp_path / "b", nearest, cache=store, progress=False)
    assert len(loads) == 1 and loads[0].model.embed_tokens.weight.dtype == torch.float32
    pipeline.quantize(tiny, tmp_path / "c", "int4-channel", cache=store, progress=False)
    assert len(loads) == 2 and len(samples) == 1
    monkeypatch.setattr(pipeline, "BFLOAT16_ABOVE", 0)
    pipeline.quantize(tiny, tmp_path / "d", "int4-block32", pipeline.Calibration(samples=2, seq_len=16),
                      cache=store, progress=False)
    assert len(loads) == 3 and loads[2].model.embed_tokens.weight.dtype == torch.bfloat16


def test_a_stage_in_a_fresh_process_returns_its_result_and_its_error(tmp_path):
    """The quickstart's stages each run in a process of their own: the result comes back, and so does a
    GemmaEdgeError, as the same one-line error."""
    import os

    from gemma_edge.model.config import GemmaConfig
    from gemma_edge.pipeline.process import in_fresh_process

    assert in_fresh_process(os.getpid) != os.getpid()
    with pytest.raises(GemmaEdgeError, match="missing.json"):
        in_fresh_process(GemmaConfig.from_json_file, tmp_path / "missing.json")

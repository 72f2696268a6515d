"""Bad input gives one clear error naming the problem; the CLI prints it without a traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from gemma_edge.model import GemmaEdgeError, ReferenceRunner, convert, load


def test_missing_path(tmp_path):
    with pytest.raises(GemmaEdgeError, match=r"nope: no such file or folder"):
        load(tmp_path / "nope")


def test_folder_without_weights(tmp_path, tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(GemmaEdgeError, match=r"no model.safetensors or model.safetensors.index.json"):
        load(tiny_dir)


def test_truncated_safetensors(tiny_dir):
    f = tiny_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(GemmaEdgeError, match=r"model.safetensors: truncated or corrupt safetensors file"):
        load(tiny_dir)


def test_not_a_gguf_file(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(GemmaEdgeError, match=r"weights.bin: not a GGUF file"):
        load(f)


def test_gguf_of_another_architecture(tmp_path):
    import gguf

    path = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GemmaEdgeError, match=r"llama.gguf: GGUF architecture is 'llama', not 'gemma3'"):
        load(path)


def test_truncated_gguf(tmp_path, real_gguf):
    part = tmp_path / "part.gguf"
    with open(real_gguf, "rb") as f:
        part.write_bytes(f.read(1 << 20))
    with pytest.raises(GemmaEdgeError, match=r"part.gguf: not a readable GGUF file .* truncated"):
        load(part)


def test_config_weight_shape_mismatch(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GemmaEdgeError, match=r"config and weights disagree: layers.0.mlp.down_proj.weight is "
                                             r"\[64, 128\] but config.json implies \[64, 96\]"):
        load(tiny_dir)


def test_missing_tensor(tiny_dir):
    tensors = load_file(tiny_dir / "model.safetensors")
    del tensors["model.layers.3.self_attn.k_norm.weight"]
    save_file(tensors, tiny_dir / "model.safetensors")
    with pytest.raises(GemmaEdgeError, match=r"1 tensors missing, e.g. layers.3.self_attn.k_norm.weight"):
        load(tiny_dir)


def test_nan_weights(tiny_dir):
    tensors = load_file(tiny_dir / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(tensors, tiny_dir / "model.safetensors")
    with pytest.raises(GemmaEdgeError, match=r"tensor layers.1.mlp.up_proj.weight contains NaN or Inf"):
        load(tiny_dir)


def test_token_id_outside_vocab(tiny_dir):
    loaded = load(tiny_dir)
    runner = ReferenceRunner(loaded.model)
    with pytest.raises(GemmaEdgeError, match=rf"token id {loaded.config.vocab_size} is outside the vocabulary"):
        runner.prefill([2, loaded.config.vocab_size])
    with pytest.raises(GemmaEdgeError, match=r"token id -1 is outside"):
        runner.prefill([-1])


def test_prompt_longer_than_context(tiny_dir):
    runner = ReferenceRunner(load(tiny_dir, max_seq_len=16).model)
    with pytest.raises(GemmaEdgeError, match=r"17 tokens exceed the context of 16"):
        runner.prefill([5] * 17)
    runner.reset()
    runner.prefill([5] * 16)
    with pytest.raises(GemmaEdgeError, match=r"17 tokens exceed the context of 16"):
        runner.decode(5)


def test_max_seq_len_beyond_the_model(tiny_dir):
    with pytest.raises(GemmaEdgeError, match=r"max_seq_len=1000 exceeds the model's context of 256"):
        load(tiny_dir, max_seq_len=1000)


def test_failed_convert_leaves_no_output(tmp_path, tiny_dir):
    f = tiny_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(GemmaEdgeError):
        convert(tiny_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_convert_refuses_to_overwrite(tmp_path, tiny_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GemmaEdgeError, match=r"out: output already exists; .* --overwrite"):
        convert(tiny_dir, out)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("argv,message", [
    (["run", "{missing}", "--prompt", "hi"], "no such file or folder"),
    (["inspect", "{tiny}/model.safetensors"], "not a GGUF file"),
    (["run", "{tiny}", "--prompt", "x" * 400, "--max-seq-len", "64"], "exceed the context of 64"),
])
def test_cli_prints_one_line_without_traceback(tmp_path, tiny_dir, argv, message):
    argv = [a.format(missing=tmp_path / "missing", tiny=tiny_dir) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "gemma_edge.cli.main", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("gemma-edge: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr

"""`write_gguf` (issue 21): a float checkpoint as the bfloat16 GGUF llama.cpp's converter would write, so the
1B/4B random checkpoints get a llama.cpp side in the speed comparison. Checked against our GGUF reader
(weights bit for bit, the config) and against llama.cpp itself (its logits are our reference's)."""

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

from gemma_edge.model import load
from gemma_edge.model.config import RopeConfig
from gemma_edge.model.gguf_file import read_gguf, write_gguf
from gemma_edge.model.loader import read_checkpoint
from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint


@pytest.fixture(scope="module")
def scaled_tiny(tmp_path_factory):
    """A tiny checkpoint whose global layers scale RoPE positions ×8, as the 4B's do."""
    config = tiny_config()  # and an embedding table with rows past the vocabulary, as the 4B's (262,208 > 262,144)
    config = dataclasses.replace(config, rope_global=RopeConfig(1_000_000.0, 8.0), vocab_size=config.vocab_size + 3)
    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("gguf") / "tiny", config)
    return folder, write_gguf(folder, folder.parent / "tiny.gguf", progress=False)


def test_the_gguf_reads_back_as_the_checkpoint(scaled_tiny):
    folder, gguf_path = scaled_tiny
    config, state, tokenizer = read_gguf(gguf_path, progress=False)
    source_config, source, source_tokenizer = read_checkpoint(folder, progress=False)
    assert config.rms_norm_eps == pytest.approx(source_config.rms_norm_eps)  # stored as float32
    assert dataclasses.replace(config, rms_norm_eps=source_config.rms_norm_eps) == source_config
    assert set(state) == set(source)
    for name, tensor in source.items():
        if name.endswith("norm.weight"):  # stored as 1 + w in float32: off by at most half an ulp of 1 + w
            ulp = torch.finfo(torch.float32).eps * (1 + tensor.abs().max().item())
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=ulp / 2)
        else:  # matrices in bfloat16: the source rounded once, bit for bit
            assert torch.equal(state[name], tensor.bfloat16().float()), name
    ours = load(gguf_path, progress=False).tokenizer
    assert ours.encode("a cat") == load(folder, progress=False).tokenizer.encode("a cat")
    pieces = ours.sp
    assert [pieces.id_to_piece(i) for i in range(config.vocab_size - 3, config.vocab_size)] == \
        [f"[PAD{i}]" for i in range(config.vocab_size - 3, config.vocab_size)]


def test_llama_cpp_computes_our_reference_logits_from_it(scaled_tiny, tmp_path, capsys):
    """An independent implementation of Gemma 3 reading the file: a misnamed tensor, a norm without its +1
    or the RoPE scaling lost from the metadata moves logits by a large part of the largest (the scaling
    alone: 18%, and 4 of 16 top-1s); llama.cpp's bf16 arithmetic by under 1%. Without llama-cpp-python,
    `gemma-edge gguf --type q4_0` says what to install."""
    from gemma_edge.cli.main import main

    folder, gguf_path = scaled_tiny
    quantized = tmp_path / "tiny-q4_0.gguf"
    if importlib.util.find_spec("llama_cpp") is None:
        assert main(["gguf", str(folder), "--out", str(quantized), "--type", "q4_0"]) == 2
        assert "pip install llama-cpp-python" in capsys.readouterr().err and not quantized.exists()
        return
    import llama_cpp

    ids = [2, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150]  # past the tiny window of 8
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[:len(ids)]), dtype=torch.float32)
    model = load(folder, progress=False).model
    with torch.no_grad():
        for name, weight in model.state_dict().items():
            if not name.endswith("norm.weight"):
                weight.copy_(weight.bfloat16().float())  # the weights the GGUF holds
        ours = model(torch.tensor([ids]), torch.arange(len(ids)))[0]
    assert (theirs - ours).abs().max() < 0.05 * ours.abs().max()
    assert (theirs.argmax(-1) == ours.argmax(-1)).sum() >= len(ids) - 1  # random logits have near ties
    assert main(["gguf", str(folder), "--out", str(quantized), "--type", "q4_0"]) == 0
    assert quantized.stat().st_size < gguf_path.stat().st_size / 2  # 4.5 bits a weight against 16
    assert [p.name for p in tmp_path.iterdir()] == [quantized.name]  # the bf16 file in between is gone
    assert llama_cpp.Llama(model_path=str(quantized), n_ctx=64, verbose=False).n_vocab() == model.config.vocab_size

"""The real Gemma 3 270M as ONNX: ONNX Runtime and onnxruntime-genai against the reference."""

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL_MAX_SEQ_LEN, REAL_PROMPTS

from gemma_edge.model import ReferenceRunner, format_chat, generate, load
from gemma_edge.runtimes.genai_runner import GenAIRunner
from gemma_edge.runtimes.onnx_runner import OnnxRunner
from gemma_edge.runtimes.parity import noise_floor, reference_logits, runner_logits, top1_agreement

pytestmark = pytest.mark.real

MAX_SEQ_LEN = REAL_MAX_SEQ_LEN
PROMPTS = REAL_PROMPTS


@pytest.fixture(scope="module")
def exports(real_export):
    return {recipe: real_export("onnx", recipe) for recipe in ("float32", "int4-block32", "fp8")}


def _passage(tokenizer):
    from conftest import LONG_TEXT

    return tokenizer.encode(LONG_TEXT)


def test_float32_logits_match_on_three_prompts_including_700_tokens(exports, real_model):
    """700 tokens (longer than the 512 window) in one prefill, then 40 decode steps; two short prompts."""
    tok = real_model.tokenizer
    runner = OnnxRunner(exports["float32"][1])
    cases = [(_passage(tok)[:740], 700)] + [(tok.encode(p) + tok.encode(" and so on", add_bos=False), 4)
                                            for p in PROMPTS[1:]]
    for tokens, prefill in cases:
        got = runner_logits(runner, tokens, prefill)
        diff = (got - reference_logits(real_model.model, tokens, prefill)).abs().max().item()
        assert diff <= 1e-3, (prefill, diff)


@pytest.mark.parametrize("recipe", ["int4-block32", "fp8"])
def test_quantized_top1_agreement_with_the_quantized_reference(exports, real_model, recipe):
    """Weight-only formats run with float activations in ONNX Runtime (MatMulNBits accuracy_level 0,
    DequantizeLinear), so the reference is numerically stable (noise floor 100%) and the issue's 99% holds."""
    ckpt, folder = exports[recipe]
    reference = load(ckpt, max_seq_len=MAX_SEQ_LEN).model
    passage = _passage(real_model.tokenizer)
    # fp8 dequantizes its 262,144-row table on every call: a shorter run keeps the suite's time in bounds
    tokens = [2] + passage[300:600] + passage[:300] if recipe == "int4-block32" else [2] + passage[:300]
    agreement = top1_agreement(runner_logits(OnnxRunner(folder), tokens, 200), reference_logits(reference, tokens, 200))
    assert agreement >= 0.99, f"{recipe}: {agreement:.4f} (reference noise floor {noise_floor(reference, tokens, 200)})"


def test_the_speed_path_agrees_with_its_int8_reference_to_the_noise_floor(real_quantized, real_model, tmp_path):
    """`export onnx --int8-activations` (MatMulNBits at accuracy_level 4): teacher-forced top-1 agreement
    with the reference built as onnxruntime computes (int8 inputs per block of each weight, the blocks the
    manifest records) reaches that reference's own noise floor, as the .pte's int8 path does, at a KL far
    inside the gate. (On the real model int8 inputs per block of 32 move the logits no more than that chaos
    does: measured KL 4.0e-4 from this reference, 2.9e-4 from the float-activation one; the tiny model's test
    shows the reference's numerics matter.)"""
    from gemma_edge.pipeline.build import export
    from gemma_edge.runtimes.parity import floor_tolerance, logit_metrics, reference_for

    ckpt = real_quantized("int4-block32")
    folder = export(ckpt, tmp_path / "speed", "onnx", max_seq_len=MAX_SEQ_LEN, int8_activations=True)
    assert json.loads((folder / "manifest.json").read_text())["activations"] == "int8_block"
    reference = reference_for(folder, ckpt, max_seq_len=MAX_SEQ_LEN).model
    passage = _passage(real_model.tokenizer)
    tokens = [2] + passage[300:600] + passage[:300]
    expected = reference_logits(reference, tokens, 200)
    got = runner_logits(OnnxRunner(folder), tokens, 200)
    floor = noise_floor(reference, tokens, 200, base=expected)
    agreement = top1_agreement(got, expected)
    assert agreement >= floor - floor_tolerance(floor, len(tokens) - 200 + 1) and agreement >= 0.95, (agreement, floor)
    assert logit_metrics(expected, got, tokens[200:])["kl"] < 0.01


@pytest.mark.parametrize("recipe", ["float32", "int4-block32"])
def test_onnxruntime_genai_generates_the_reference_tokens(exports, real_model, recipe):
    source, folder = exports[recipe]
    reference = real_model.model if recipe == "float32" else load(source, max_seq_len=MAX_SEQ_LEN).model
    tok = real_model.tokenizer
    genai = GenAIRunner(folder)
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        expected = generate(ReferenceRunner(reference), ids, 32, stop_ids=tok.stop_ids)
        assert genai.generate(ids, 32) == expected, (recipe, prompt)


def test_bench_measures_a_gguf_side_by_side_or_says_what_is_missing(exports, real_gguf, capsys):
    """`gemma-edge bench ARTIFACT --gguf FILE`: llama.cpp through llama-cpp-python when it is installed."""
    from gemma_edge.cli.main import main

    args = ["bench", str(exports["int4-block32"][1]), "--gguf", str(real_gguf), "--prompt-len", "16",
            "--decode-tokens", "4", "--runs", "1"]
    if importlib.util.find_spec("llama_cpp") is None:
        assert main(args) == 2
        assert "pip install llama-cpp-python" in capsys.readouterr().err
    else:
        assert main(args + ["--json"]) == 0
        out = capsys.readouterr().out
        ours, gguf = json.loads(out[out.index("["):])
        assert ours["artifact"].endswith("model.onnx") and gguf["artifact"] == str(real_gguf)
        assert gguf["decode_tok_s"] > 0 and gguf["file_mib"] == pytest.approx(real_gguf.stat().st_size / 2**20)


CHAT_SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "examples" / "genai_chat.py"


def test_genai_tokenizer_and_stream_match_sentencepiece_on_the_exported_folder(exports, real_model):
    """og.Tokenizer reads the folder's tokenizer.json: SentencePiece's ids on multilingual prose, code, chat,
    runs of spaces and newlines and every user-defined piece, and its stream decodes them to the same text.
    Runs of more than 31 spaces (the longest space piece; the code and Python-docs domains have some) are cut
    to 31: genai 0.18 ignores the pre-tokenizer that splits longer ones as SentencePiece does (docs/onnx.md)."""
    import onnxruntime_genai as og
    from test_tokenizer import _agreement_texts

    tok = real_model.tokenizer
    genai = og.Tokenizer(og.Model(str(exports["int4-block32"][1])))
    texts = list(dict.fromkeys(re.sub(" {32,}", " " * 31, t) for t in _agreement_texts(tok)))  # runs cut to 31
    assert len(texts) > 50
    for text in texts:
        ids = tok.encode(text)
        assert list(genai.encode("<bos>" + text)) == ids, text[:60]
        stream = genai.create_stream()
        assert "".join(stream.decode(i) for i in ids[1:]) == tok.decode(ids[1:]), text[:60]


def test_a_genai_only_chat_script_generates_the_reference_tokens(exports, real_model):
    """docs/examples/genai_chat.py imports nothing but onnxruntime_genai: its chat template, tokenizer,
    greedy generation and streamed text on the int4 folder give the quantized reference's tokens."""
    imports = {a.name for node in ast.walk(ast.parse(CHAT_SCRIPT.read_text())) if isinstance(node, ast.Import)
               for a in node.names} | {node.module for node in ast.walk(ast.parse(CHAT_SCRIPT.read_text()))
                                       if isinstance(node, ast.ImportFrom)}
    assert imports == {"json", "sys", "onnxruntime_genai"}
    source, folder = exports["int4-block32"]
    prompts = ["Name three rivers in Europe.", "Write a haiku about the sea.", "Wie spät ist es in Tokio?"]
    done = subprocess.run([sys.executable, str(CHAT_SCRIPT), str(folder), *prompts], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    replies = json.loads(done.stdout.strip().splitlines()[-1])
    reference, tok = load(source, max_seq_len=MAX_SEQ_LEN).model, real_model.tokenizer
    for prompt, reply in zip(prompts, replies, strict=True):
        ids = tok.encode(format_chat([{"role": "user", "content": prompt}]))
        assert reply == generate(ReferenceRunner(reference), ids, 48, stop_ids=tok.stop_ids), prompt
        assert tok.decode(reply) in done.stdout

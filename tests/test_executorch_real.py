"""The real Gemma 3 270M as a .pte: ExecuTorch's own TextLLMRunner generates the reference's tokens."""

import hashlib
import json

import pytest
import torch

from gemma_edge.calibration.ptq import quantize_model
from gemma_edge.calibration.recipe import PRESETS
from gemma_edge.export.executorch import export_pte
from gemma_edge.model import ReferenceRunner, format_chat, generate, load
from gemma_edge.runtimes.executorch_runner import ExecuTorchRunner, StockTextRunner

pytestmark = pytest.mark.real

MAX_SEQ_LEN = 1024
PROMPTS = ["The quick brown fox", "def fibonacci(n):\n    ",
           format_chat([{"role": "user", "content": "Name three rivers in Europe."}])]


@pytest.fixture(scope="module")
def exports(real_model, real_hf_dir, tmp_path_factory):
    """float32 from the converted folder; int4-block32 and 8da4w from QuantizedCheckpoints."""
    root = tmp_path_factory.mktemp("pte-real")
    out = {"float32": (real_hf_dir, export_pte(real_hf_dir, root / "float32", max_seq_len=MAX_SEQ_LEN))}
    for recipe in ("int4-block32", "8da4w"):
        ckpt = quantize_model(real_model, PRESETS[recipe], progress=False).save(root / f"q-{recipe}")
        out[recipe] = (ckpt, export_pte(ckpt, root / recipe, max_seq_len=MAX_SEQ_LEN))
    return out


def _long_prompt(tokenizer, n=700):
    from conftest import LONG_TEXT

    return tokenizer.encode(LONG_TEXT)[:n]


def _teacher_forced(pte_dir, reference, tokens, prefill):
    """Logits of the .pte (prefill in one call, then one token at a time) and of the reference."""
    runner = ExecuTorchRunner(pte_dir / "model.pte")
    got = torch.stack([runner.prefill(tokens[:prefill])] + [runner.decode(t) for t in tokens[prefill:]])
    reference.reset_caches()
    with torch.no_grad():
        expected = reference(torch.tensor([tokens]), torch.arange(len(tokens)))[0, prefill - 1:]
    return got, expected


def test_float32_stock_runner_generates_the_reference_tokens(exports, real_model):
    tok = real_model.tokenizer
    stock = StockTextRunner(exports["float32"][1])
    for prompt in PROMPTS:
        text, stats = stock.generate(prompt, max_new_tokens=64)
        ref = generate(ReferenceRunner(real_model.model), tok.encode(prompt), 64)
        assert text == tok.decode(ref), prompt
        assert stats["generated_tokens"] + 1 >= 64 or ref[-1] in tok.stop_ids


def test_float32_teacher_forced_logits_including_a_700_token_prefill(exports, real_model):
    tok = real_model.tokenizer
    tokens = _long_prompt(tok, 740)
    got, expected = _teacher_forced(exports["float32"][1], real_model.model, tokens, prefill=700)
    assert (got - expected).abs().max().item() <= 1e-3
    short = tok.encode(PROMPTS[1]) + tok.encode(" return n if n < 2 else fibonacci(n - 1)", add_bos=False)
    got, expected = _teacher_forced(exports["float32"][1], real_model.model, short, prefill=4)
    assert (got - expected).abs().max().item() <= 1e-3


@pytest.mark.parametrize("recipe", ["int4-block32", "8da4w"])
def test_quantized_pte_agrees_with_its_quantized_reference(exports, real_model, recipe):
    """Teacher-forced top-1 agreement against the quantized reference from the same checkpoint.

    Issue #4 asks for >= 99%; measured on this 601-token sequence: 98.3% (int4-block32) and 97.3% (8da4w),
    so the issue stays open and this test guards what holds (>= 95%: a wrong weight, scale or mask drops
    far below). With int8 activations, float noise of ~1e-6 between runtimes flips single roundings, which
    also makes free-running greedy text part from the reference after a few tokens (docs/executorch.md).
    The stock runner must agree with our own runner on the same .pte.
    """
    ckpt, pte = exports[recipe]
    reference = load(ckpt, max_seq_len=MAX_SEQ_LEN).model
    tokens = _long_prompt(real_model.tokenizer, 600)[300:] + _long_prompt(real_model.tokenizer, 300)
    got, expected = _teacher_forced(pte, reference, [2] + tokens, prefill=200)
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agreement >= 0.95, f"{recipe}: top-1 agreement {agreement:.3f}"
    stock = StockTextRunner(pte)
    tok = real_model.tokenizer
    for prompt in PROMPTS:
        text, _ = stock.generate(prompt, max_new_tokens=32)
        ours = generate(ExecuTorchRunner(pte / "model.pte"), tok.encode(prompt), 32)
        assert text == tok.decode(ours), (recipe, prompt)


def test_manifest_describes_the_quantized_artifact(exports):
    ckpt, pte = exports["int4-block32"]
    manifest = json.loads((pte / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "int4-block32"
    assert manifest["sha256"] == hashlib.sha256((pte / "model.pte").read_bytes()).hexdigest()
    assert manifest["size_bytes"] < 400 * 2**20

"""The real Gemma 3 270M as a .pte: ExecuTorch's own TextLLMRunner generates the reference's tokens."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import REAL_MAX_SEQ_LEN, REAL_PROMPTS

from gemma_edge.model import ReferenceRunner, generate
from gemma_edge.runtimes.executorch_runner import ExecuTorchRunner, StockTextRunner
from gemma_edge.runtimes.parity import (floor_tolerance, noise_floor, reference_for, reference_logits, runner_logits,
                                        top1_agreement)

# One xdist worker lowers the real .pte files (minutes each) and runs every test that reads them.
pytestmark = [pytest.mark.real, pytest.mark.xdist_group("real-pte")]

MAX_SEQ_LEN = REAL_MAX_SEQ_LEN
PROMPTS = REAL_PROMPTS


@pytest.fixture(scope="module")
def exports(real_export):
    """float32 from the converted folder; int4-block32 from its QuantizedCheckpoint. (8da4w's .pte is the
    same program byte for byte: tests/test_executorch_tiny.py checks that.)"""
    return {recipe: real_export("pte", recipe) for recipe in ("float32", "int4-block32")}


def _long_prompt(tokenizer, n=700):
    from conftest import LONG_TEXT

    return tokenizer.encode(LONG_TEXT)[:n]


def _teacher_forced(pte_dir, reference, tokens, prefill):
    """Logits of the .pte (prefill in one call, then one token at a time) and of the reference."""
    return (runner_logits(ExecuTorchRunner(pte_dir / "model.pte"), tokens, prefill),
            reference_logits(reference, tokens, prefill))


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


@pytest.mark.parametrize("recipe", ["int4-block32"])
def test_quantized_pte_agrees_with_its_reference_to_the_noise_floor(exports, real_model, recipe):
    """Teacher-forced top-1 agreement with the quantized reference built as the .pte computes (int8
    dynamic activations: the manifest says so) reaches that reference's own noise floor — its agreement
    with itself under ulp-sized nudges (runtimes/parity.py), within 1% plus three binomial sigmas. Issue
    #4 asks for >= 99%; the floor on this 601-token sequence is ~98.3%, so no runtime can reach 99%
    (docs/executorch.md). A wrong weight, scale or mask falls far below. The stock runner must also agree with our own runner on the same .pte.
    """
    ckpt, pte = exports[recipe]
    assert json.loads((pte / "manifest.json").read_text())["activations"] == "int8_dynamic"
    reference = reference_for(pte, ckpt, max_seq_len=MAX_SEQ_LEN).model
    tokens = [2] + _long_prompt(real_model.tokenizer, 600)[300:] + _long_prompt(real_model.tokenizer, 300)
    expected = reference_logits(reference, tokens, 200)
    floor = noise_floor(reference, tokens, 200, base=expected)
    agreement = top1_agreement(runner_logits(ExecuTorchRunner(pte / "model.pte"), tokens, 200), expected)
    allowed = floor_tolerance(floor, len(tokens) - 200 + 1)
    assert agreement >= floor - allowed and agreement >= 0.95, f"{recipe}: {agreement:.4f} vs floor {floor:.4f}"
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


LOCKED_KIB = """
import sys
import executorch.extension.llm.custom_ops.custom_ops, executorch.kernels.quantized  # the .pte's kernels
from executorch.runtime import Runtime
program = Runtime.get().load_program(sys.argv[1])
method = program.load_method("forward")  # (both held while the status is read)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmLck:")))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="VmLck, RLIMIT_MEMLOCK and capabilities are Linux's")
def test_bench_processes_map_the_pte_without_locking_its_pages(exports):
    """ExecuTorch's bindings ask mlock of every mapped segment (the int8 table's 160 MiB stay locked after load);
    a measured process is refused it, as an app is."""
    from gemma_edge.runtimes.bench import unlocked_pages

    pte = exports["int4-block32"][1] / "model.pte"

    def locked_kib(**kwargs) -> int:
        return int(subprocess.run([sys.executable, "-c", LOCKED_KIB, str(pte)], check=True, capture_output=True,
                                  text=True, **kwargs).stdout.split()[-1])

    assert locked_kib(preexec_fn=unlocked_pages) == 0
    if os.geteuid() == 0:  # and the probe does see a lock where the host grants one
        assert locked_kib() > 0

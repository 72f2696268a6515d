"""Incremental decode must equal one full-sequence forward at every position (the sliding-window traps)."""

import pytest
import torch

from gemma_edge.model import GLOBAL, SLIDING, load
from gemma_edge.model.gemma import Gemma, ring_key_positions
from gemma_edge.model.tiny import random_state_dict, tiny_config

W = 8


def _model(config, seed=0):
    m = Gemma(config, max_seq_len=4 * W)
    m.load_state_dict(random_state_dict(config, seed))
    return m.eval()


def _full_logits(model, tokens):
    model.reset_caches()
    with torch.no_grad():
        return model(tokens[None], torch.arange(len(tokens)))[0]



@pytest.mark.parametrize("prefill", [W - 3, W, W + 5, 2 * W + 1])
def test_prefill_then_decode_to_three_windows(prefill):
    config = tiny_config(sliding_window=W, num_kv_heads=2)
    model = _model(config)
    tokens = torch.randint(0, config.vocab_size, (3 * W,), generator=torch.Generator().manual_seed(prefill))
    full = _full_logits(model, tokens)
    inc = _run_chunks(model, tokens, [prefill])
    torch.testing.assert_close(inc, full, atol=2e-5, rtol=0)


def test_uneven_chunks_across_the_ring_wrap():
    config = tiny_config(sliding_window=W)
    model = _model(config, seed=1)
    tokens = torch.randint(0, config.vocab_size, (3 * W,), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(_run_chunks(model, tokens, [5, 7, 1, 9]), _full_logits(model, tokens),
                               atol=2e-5, rtol=0)


def test_ring_holds_only_the_last_window():
    config = tiny_config(sliding_window=W)
    model = _model(config)
    tokens = torch.randint(0, config.vocab_size, (3 * W,), generator=torch.Generator().manual_seed(0))
    _run_chunks(model, tokens, [W + 3])
    ring = model.layers[0].self_attn.cache
    held = ring_key_positions(torch.tensor(3 * W), W)
    assert sorted(held.tolist()) == list(range(2 * W, 3 * W))
    assert all(p % W == slot for slot, p in enumerate(held.tolist()))
    k_after = ring.k.clone()  # one prefill of all 3W tokens leaves the same keys in the same slots
    _run_chunks(model, tokens, [3 * W])
    torch.testing.assert_close(ring.k, k_after, atol=1e-6, rtol=0)
    assert ring_key_positions(torch.tensor(0), W).lt(0).all()  # an empty ring holds nothing
    assert model.layers[5].self_attn.cache.k.shape[2] == 4 * W  # the global layer keeps every position


@pytest.mark.parametrize("layer_types,sees_position_0", [
    ((SLIDING, GLOBAL), True),
    ((SLIDING, SLIDING), False),
])
def test_only_global_layers_reach_position_0_after_three_windows(layer_types, sees_position_0):
    """Changing token 0 moves the logits at position 3W through the global layer, and only through it
    (two sliding layers reach back 2 * (W - 1) < 3W positions)."""
    config = tiny_config(sliding_window=W, num_layers=2, layer_types=layer_types)
    model = _model(config, seed=2)
    tokens = torch.randint(7, config.vocab_size, (3 * W + 1,), generator=torch.Generator().manual_seed(4))
    other = tokens.clone()
    other[0] = (tokens[0] + 1) % config.vocab_size
    a = _run_chunks(model, tokens, [W])[-1]
    b = _run_chunks(model, other, [W])[-1]
    assert (not torch.equal(a, b)) == sees_position_0


def _final_hidden(model, tokens, chunks):
    """The final-norm output at every position (what the tied LM head multiplies), fed in the given
    chunk sizes and then one token at a time. Cheaper than [T, 262144] logits, and the same test: the
    logits are a fixed linear map of it."""
    captured = []
    hook = model.norm.register_forward_hook(lambda mod, inp, out: captured.append(out[0]))
    try:
        _run_chunks(model, tokens, chunks, last_only=True)
    finally:
        hook.remove()
    return torch.cat(captured)


def _run_chunks(model, tokens, chunks, last_only=False):
    model.reset_caches()
    out, pos = [], 0
    sizes = list(chunks) + [1] * (len(tokens) - sum(chunks))
    with torch.no_grad():
        for n in sizes:
            out.append(model(tokens[None, pos:pos + n], torch.arange(pos, pos + n), last_logits_only=last_only)[0])
            pos += n
    return torch.cat(out)


@pytest.mark.real
def test_real_270m_incremental_equals_full_forward(real_hf_dir):
    """Prefill shorter than, equal to and longer than the 512 window, then decode on to 3x the window.

    In float64, so that equality means equal semantics: in float32 the logits differ by up to ~1e-3
    (magnitude ~50) between GEMM shapes alone, while float64 agrees to ~1e-14.
    """
    from conftest import LONG_TEXT

    loaded = load(real_hf_dir, max_seq_len=1600, dtype=torch.float64, progress=False)
    model, window = loaded.model, loaded.config.sliding_window
    tokens = torch.tensor(loaded.tokenizer.encode(LONG_TEXT)[: 3 * window + 1])
    assert len(tokens) == 3 * window + 1
    full = _final_hidden(model, tokens, [len(tokens)])
    # Decode across the ring wrap from a short and an exact-window prefill; a prefill that wraps the
    # ring twice inside one call, then decode to 3x the window (the tiny tests decode every step there).
    for prefill, end in [(window - 20, window + 20), (window, window + 20), (3 * window - 30, 3 * window + 1)]:
        inc = _final_hidden(model, tokens[:end], [prefill])
        diff = (inc - full[:end]).abs().max().item()
        assert diff <= 1e-9 * full.abs().max().item(), f"prefill {prefill}: max |dh| {diff}"

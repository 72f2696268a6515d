"""The fidelity helpers in gemma_edge.runtimes.parity, on tiny random models."""

import json

import pytest
import torch

from gemma_edge.calibration.checkpoint import DynamicInt8Linear
from gemma_edge.calibration.ptq import quantize_model
from gemma_edge.calibration.recipe import PRESETS
from gemma_edge.model import GemmaEdgeError, ReferenceRunner, generate, load
from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint
from gemma_edge.runtimes.parity import (first_divergence, greedy_agreement, noise_floor, nudged, reference_for,
                                        reference_logits, runner_logits, top1_agreement)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    ckpt = write_tiny_checkpoint(root / "tiny", tiny_config(sliding_window=8))
    return root, ckpt, load(ckpt, max_seq_len=64)


def test_runner_logits_equal_reference_logits_for_the_reference_itself(tiny):
    _, _, loaded = tiny
    tokens = list(range(3, 40))
    a = runner_logits(ReferenceRunner(loaded.model), tokens, prefill=20)
    b = reference_logits(loaded.model, tokens, prefill=20)
    assert a.shape == (len(tokens) - 19, loaded.config.vocab_size)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert top1_agreement(a, b) == 1.0


def test_greedy_agreement_is_token_by_token_greedy_decoding(tiny):
    """The one-forward check against the reference's own greedy decode, one token per call."""
    _, _, loaded = tiny
    model, prompt = loaded.model, list(range(3, 20))
    own = generate(ReferenceRunner(model), prompt, 12)
    assert greedy_agreement(model, prompt, own) == len(own) == 12
    for k in (0, 5, 11):  # the artifact leaves the reference's path at token k
        other = [*own[:k], (own[k] + 1) % loaded.config.vocab_size, *own[k + 1:]]
        assert greedy_agreement(model, prompt, other) == k
    stopped = generate(ReferenceRunner(model), prompt, 12, stop_ids=(own[4],))  # ends early at a stop token
    assert greedy_agreement(model, prompt, stopped) == len(stopped) <= 5


def test_nudge_is_tiny_and_undone(tiny):
    _, _, loaded = tiny
    model, tokens = loaded.model, list(range(3, 30))
    before = model.embed_scale
    base = reference_logits(model, tokens, 10)
    with nudged(model):
        assert model.embed_scale == pytest.approx(before * (1 + 2**-22), rel=1e-12)
        moved = reference_logits(model, tokens, 10)
    assert model.embed_scale == before
    assert 0 < (moved - base).abs().max().item() < 1e-4
    assert noise_floor(model, tokens, 10) == 1.0  # a float model is not chaotic at this scale


def test_reference_follows_the_manifests_activations(tiny, tmp_path):
    root, _, loaded = tiny
    ckpt = quantize_model(loaded, PRESETS["int4-block32"], progress=False).save(root / "q")
    for activations, expect in (("int8_dynamic", True), ("none", False)):
        (tmp_path / "manifest.json").write_text(json.dumps({"activations": activations}))
        model = reference_for(tmp_path, ckpt, max_seq_len=32).model
        assert any(isinstance(m, DynamicInt8Linear) for m in model.modules()) is expect
    with pytest.raises(GemmaEdgeError, match="manifest.json: missing"):
        reference_for(tmp_path / "nowhere", ckpt)


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) == 3
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([], [4]) == 0


def test_logit_metrics_in_chunks_equal_the_whole_tensor_formulas():
    """Hand-written whole-tensor formulas (what the metrics mean) against the chunked computation, on
    random logits with a chunk that does not divide the positions."""
    import math

    import torch.nn.functional as F

    from gemma_edge.runtimes.parity import logit_metrics

    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(37, 1000, generator=gen)
    got = ref + 0.3 * torch.randn(37, 1000, generator=gen)
    targets = torch.randint(0, 1000, (36,), generator=gen)
    ref_logp, got_logp = F.log_softmax(ref.double(), -1), F.log_softmax(got.double(), -1)
    top5 = ref.topk(5, -1).indices[:, :, None] == got.topk(5, -1).indices[:, None, :]
    expected = {
        "max_abs_logit": (got - ref).abs().max().item(),
        "cosine_min": F.cosine_similarity(got.double(), ref.double(), dim=-1).min().item(),
        "top1": (ref.argmax(-1) == got.argmax(-1)).double().mean().item(),
        "top5": top5.any(-1).double().mean().item(),
        "kl": (ref_logp.exp() * (ref_logp - got_logp)).sum(-1).mean().item(),
        "perplexity_ref": math.exp(-ref_logp[:-1].gather(1, targets[:, None]).mean().item()),
        "perplexity": math.exp(-got_logp[:-1].gather(1, targets[:, None]).mean().item()),
    }
    got_metrics = logit_metrics(ref, got, targets.tolist(), chunk=5)
    assert got_metrics["finite"]
    for key, value in expected.items():
        assert got_metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert 0 < expected["kl"] and 0 < expected["top5"] < 1  # the case is not degenerate


def test_every_preset_has_quantization_loss_thresholds():
    """`parity --against float` (and the quickstart with --recipe) gates on the recipe's entry: a preset
    without one would fail every such run."""
    from gemma_edge.runtimes.parity import load_thresholds

    assert set(PRESETS) <= set(load_thresholds()["quantization_loss"])

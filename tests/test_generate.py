import pytest
import torch

from gemma_edge.model import ReferenceRunner, Sampling, generate, load
from gemma_edge.model.generate import sample


class ScriptedRunner:
    """Returns fixed logits: makes the loop's control flow checkable by hand."""

    def __init__(self, vocab=10):
        self.vocab, self.calls = vocab, []

    def reset(self):
        self.calls.append("reset")

    def prefill(self, tokens):
        self.calls.append(("prefill", list(tokens)))
        return self._logits(len(tokens))

    def decode(self, token):
        self.calls.append(("decode", token))
        return self._logits(token + 1)

    def _logits(self, favourite):
        logits = torch.zeros(self.vocab)
        logits[favourite % self.vocab] = 5.0
        return logits


def test_greedy_loop_streams_and_stops():
    runner, seen = ScriptedRunner(), []
    out = generate(runner, [7, 7], max_new_tokens=10, stop_ids=[5], on_token=seen.append)
    assert out == [2, 3, 4, 5] == seen  # prefill of 2 favours 2, then each token favours token + 1
    assert runner.calls == ["reset", ("prefill", [7, 7]), ("decode", 2), ("decode", 3), ("decode", 4)]


def test_max_new_tokens_is_respected_without_an_extra_decode():
    runner = ScriptedRunner()
    assert generate(runner, [1], max_new_tokens=3) == [1, 2, 3]
    assert runner.calls[-1] == ("decode", 2)


def test_sampling_filters():
    logits = torch.tensor([0.0, 1.0, 3.0, 2.0])
    assert sample(logits, Sampling()) == 2
    assert sample(logits, Sampling(temperature=1.0, top_k=1)) == 2
    assert sample(logits, Sampling(temperature=1.0, top_p=0.01)) == 2
    gen = torch.Generator().manual_seed(0)
    draws = {sample(logits, Sampling(temperature=1.0, top_k=2), gen) for _ in range(200)}
    assert draws == {2, 3}
    with pytest.raises(FloatingPointError):
        sample(torch.tensor([0.0, float("nan")]), Sampling())


def test_seeded_sampling_is_reproducible(tiny_dir):
    runner = ReferenceRunner(load(tiny_dir).model)
    s = Sampling(temperature=1.0, top_k=20, top_p=0.9, seed=3)
    a = generate(runner, [2, 10, 11], 12, s)
    b = generate(runner, [2, 10, 11], 12, s)
    c = generate(runner, [2, 10, 11], 12, Sampling(temperature=1.0, top_k=20, top_p=0.9, seed=4))
    assert a == b and a != c

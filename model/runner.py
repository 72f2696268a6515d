"""The reference model behind the `Runner` interface: tracks the position and checks inputs."""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import GemmaEdgeError
from .gemma import Gemma
from .generate import check_token_ids


class ReferenceRunner:
    """`image_features` ([images, tokens per image, hidden], from `vision.VisionEncoder`) fill the image soft
    tokens of every prefill that starts a session; decode steps are text."""

    def __init__(self, model: Gemma, image_features: torch.Tensor | None = None):
        self.model = model
        self.image_features = image_features
        self.pos = 0

    def reset(self) -> None:
        self.model.reset_caches()
        self.pos = 0

    def _check(self, tokens: Sequence[int]) -> None:
        check_token_ids(tokens, self.model.config.vocab_size)
        if self.pos + len(tokens) > self.model.max_seq_len:
            raise GemmaEdgeError(f"{self.pos + len(tokens)} tokens exceed the context of {self.model.max_seq_len}; "
                                 "shorten the prompt or raise --max-seq-len")

    @torch.no_grad()
    def forward(self, tokens: Sequence[int], last_only: bool = True) -> torch.Tensor:
        """Feed tokens at the next positions; logits [T, vocab] (or [vocab] with last_only)."""
        if not tokens:
            raise GemmaEdgeError("empty prompt: give at least one token")
        self._check(tokens)
        t = torch.tensor([list(tokens)], dtype=torch.long)
        pos = torch.arange(self.pos, self.pos + len(tokens))
        images = self.image_features if self.pos == 0 else None
        logits = self.model(t, pos, last_logits_only=last_only, image_features=images)[0].float()
        self.pos += len(tokens)
        return logits[-1] if last_only else logits

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor:
        return self.forward(tokens)

    def decode(self, token: int) -> torch.Tensor:
        return self.forward([token])

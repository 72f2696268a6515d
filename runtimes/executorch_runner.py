"""Runners for a `.pte`: token level through `executorch.runtime`, text level through ExecuTorch's stock
`TextLLMRunner` (the C++ runner Android's `LlmModule` wraps)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch

from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.generate import check_token_ids


def load_executorch_kernels() -> None:
    """The fused LLM ops and the quantized kernels are registered by importing these modules."""
    try:
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401
    except ImportError as e:
        raise GemmaEdgeError(f"ExecuTorch is not installed ({e}); run: pip install 'gemma-edge[export]'") from None


class ExecuTorchRunner:
    """`Runner` over `executorch.runtime`: forward(tokens [1, T], start [1]) -> last logits."""

    def __init__(self, pte: str | Path):
        load_executorch_kernels()
        from executorch.runtime import Runtime

        pte = Path(pte)
        if not pte.is_file():
            raise GemmaEdgeError(f"{pte}: no such .pte file")
        program = Runtime.get().load_program(str(pte))
        self.method = program.load_method("forward")
        self.max_seq_len = int(program.load_method("get_max_seq_len").execute([])[0])
        self.vocab_size = int(program.load_method("get_vocab_size").execute([])[0])
        self.pos = 0

    def reset(self) -> None:
        # Cache contents need no clearing: masks only admit positions written in this session.
        self.pos = 0

    def _forward(self, tokens: Sequence[int]) -> torch.Tensor:
        if self.pos + len(tokens) > self.max_seq_len:
            raise GemmaEdgeError(f"{self.pos + len(tokens)} tokens exceed the .pte's max_seq_len {self.max_seq_len}")
        check_token_ids(tokens, self.vocab_size)
        out = self.method.execute([torch.tensor([list(tokens)], dtype=torch.long),
                                   torch.tensor([self.pos], dtype=torch.long)])[0]
        self.pos += len(tokens)
        return out.reshape(-1, out.shape[-1])[-1].float()

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor:
        return self._forward(tokens)

    def decode(self, token: int) -> torch.Tensor:
        return self._forward([token])


def join_byte_pieces(text: str) -> str:
    """TextLLMRunner prints byte-fallback tokens as their piece names ("<0xE2><0x82><0xAC>"); turn runs of
    them into the text SentencePiece decodes them to (invalid UTF-8 becomes U+FFFD, one per byte)."""
    def decode(run: re.Match) -> str:
        return bytes(int(h, 16) for h in re.findall(r"<0x([0-9A-F]{2})>", run.group())).decode("utf-8", "replace")

    return re.sub(r"(?:<0x[0-9A-F]{2}>)+", decode, text)


class StockTextRunner:
    """ExecuTorch's own C++ `TextLLMRunner`: text in, text out, exactly what an app gets."""

    def __init__(self, folder: str | Path):
        load_executorch_kernels()
        from executorch.extension.llm.runner import TextLLMRunner

        folder = Path(folder)
        try:
            self.runner = TextLLMRunner(str(folder / "model.pte"), str(folder / "tokenizer.model"))
        except RuntimeError as e:
            raise GemmaEdgeError(f"{folder}: ExecuTorch's TextLLMRunner refused the artifact ({e})") from None

    def generate(self, prompt: str, max_new_tokens: int) -> tuple[str, dict]:
        """Greedy text after `prompt` (BOS added by the runner) and the runner's stats."""
        import json

        from executorch.extension.llm.runner import GenerationConfig

        pieces: list[str] = []
        stats: list = []
        config = GenerationConfig(echo=False, max_new_tokens=max_new_tokens, temperature=0.0, num_bos=1)
        self.runner.generate(prompt, config, token_callback=pieces.append, stats_callback=stats.append)
        self.runner.reset()
        return "".join(pieces), json.loads(stats[0].to_json_string()) if stats else {}

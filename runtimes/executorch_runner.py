"""Runners for a `.pte`: token level through `executorch.runtime`, text level through ExecuTorch's stock
`TextLLMRunner` (the C++ runner Android's `LlmModule` wraps); multimodal `.pte` files through both too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch

from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.generate import check_token_ids

from . import artifact_vision


def load_executorch_kernels() -> None:
    """The fused LLM ops and the quantized kernels are registered by importing these modules."""
    try:
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401
    except ImportError as e:
        raise GemmaEdgeError(f"ExecuTorch is not installed ({e}); run: pip install 'gemma-edge[export]'") from None


def check_pte_header(pte: Path) -> None:
    """An ExecuTorch program starts with a flatbuffer offset and the identifier ET12 (then the extended
    header eh00): anything else is refused here, before the runtime (which may abort on it) sees it."""
    with open(pte, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[4:8] != b"ET12":
        raise GemmaEdgeError(f"{pte}: not an ExecuTorch program (no ET12 identifier); export it again with "
                             "gemma-edge export pte")


def data_file(pte: Path) -> str | None:
    """model.ptd beside model.pte: the data the program keeps outside it (the tied table, stored once), which
    every runtime must be given with the program (`data_path`; Android's `LlmModuleConfig.dataPath`)."""
    ptd = pte.with_suffix(".ptd")
    return str(ptd) if ptd.is_file() else None


def load_program(pte: str | Path):
    """An `executorch.runtime` program with the kernels registered, or a one-line error naming the file."""
    load_executorch_kernels()
    from executorch.runtime import Runtime

    pte = Path(pte)
    if not pte.is_file():
        raise GemmaEdgeError(f"{pte}: no such .pte file")
    check_pte_header(pte)
    try:
        return Runtime.get().load_program(str(pte), data_path=data_file(pte))
    except RuntimeError as e:
        raise GemmaEdgeError(f"{pte}: ExecuTorch cannot load it ({e}); export it again") from None


class ExecuTorchRunner:
    """`Runner` over `executorch.runtime`: forward(tokens [1, T], start [1]) -> last logits. A prompt longer
    than one call (`get_max_seq_len`) goes in calls of that length, as ExecuTorch's TextPrefiller splits it."""

    def __init__(self, pte: str | Path):
        program = load_program(pte)
        self.method = program.load_method("forward")
        self.prefill_len = int(program.load_method("get_max_seq_len").execute([])[0])
        self.max_seq_len = int(program.load_method("get_max_context_len").execute([])[0])
        self.vocab_size = int(program.load_method("get_vocab_size").execute([])[0])
        self.pos = 0

    def reset(self) -> None:
        # Cache contents need no clearing: masks only admit positions written in this session.
        self.pos = 0

    def _forward(self, tokens: Sequence[int]) -> torch.Tensor:
        if self.pos + len(tokens) > self.max_seq_len:
            raise GemmaEdgeError(f"{self.pos + len(tokens)} tokens exceed the .pte's context of {self.max_seq_len}")
        if not tokens:
            raise GemmaEdgeError("no tokens to run; a prompt has at least one (the BOS)")
        check_token_ids(tokens, self.vocab_size)
        for start in range(0, len(tokens), self.prefill_len):
            chunk = list(tokens[start:start + self.prefill_len])
            out = self.method.execute([torch.tensor([chunk], dtype=torch.long),
                                       torch.tensor([self.pos], dtype=torch.long)])[0]
            self.pos += len(chunk)
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
        check_pte_header(folder / "model.pte")
        try:
            self.runner = TextLLMRunner(str(folder / "model.pte"), str(folder / "tokenizer.model"),
                                        data_file(folder / "model.pte"))
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


class ExecuTorchMultimodalRunner:
    """`Runner` over a multimodal `.pte` (`vision_encoder`, `token_embedding`, `text_decoder`) through
    `executorch.runtime`, fed one segment per call as ExecuTorch's MultimodalRunner feeds it: a run of text,
    or one image. `images` (preprocessed pixels [N, 3, S, S]) fill the prompt's images in order."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        program = load_program(folder / "model.pte")
        missing = {"vision_encoder", "token_embedding", "text_decoder"} - set(program.method_names)
        meta = artifact_vision(folder)
        if missing or meta is None:
            raise GemmaEdgeError(f"{folder}: not a multimodal .pte folder (no {', '.join(sorted(missing)) or 'vision'} "
                                 "in it); export a multimodal checkpoint without --text-only")
        self.vision, self.embed, self.decoder = (program.load_method(n) for n in
                                                 ("vision_encoder", "token_embedding", "text_decoder"))
        self.max_seq_len = int(program.load_method("get_max_context_len").execute([])[0])  # the KV cache's length
        self.vocab_size = int(program.load_method("get_vocab_size").execute([])[0])
        self.image_token_id, self.tokens_per_image = meta["image_token_id"], meta["tokens_per_image"]
        self.images: torch.Tensor | None = None
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [1, 3, S, S] -> [1, tokens per image, hidden + 1] (the last channel flags image tokens)."""
        return self.vision.execute([pixels.contiguous()])[0]

    def _decode(self, embeds: torch.Tensor) -> torch.Tensor:
        if self.pos + embeds.shape[1] > self.max_seq_len:
            raise GemmaEdgeError(f"{self.pos + embeds.shape[1]} tokens exceed the .pte's max_seq_len {self.max_seq_len}")
        out = self.decoder.execute([embeds, torch.tensor([self.pos], dtype=torch.long)])[0]
        self.pos += embeds.shape[1]
        return out.reshape(-1, out.shape[-1])[-1].float()

    def _text(self, tokens: Sequence[int]) -> torch.Tensor:
        check_token_ids(tokens, self.vocab_size)
        return self.embed.execute([torch.tensor([list(tokens)], dtype=torch.long)])[0]

    def segment_logits(self, tokens: Sequence[int]) -> list[torch.Tensor]:
        """The last logits of each call the MultimodalRunner would make for this prompt."""
        from gemma_edge.model.image_processing import prompt_segments

        segments = prompt_segments(tokens, self.image_token_id, self.tokens_per_image)
        count = sum(isinstance(s, int) for s in segments)
        if count != (0 if self.images is None else len(self.images)):
            raise GemmaEdgeError(f"the prompt has {count} images but {0 if self.images is None else len(self.images)} "
                                 "were given; set runner.images to the preprocessed pixels of each")
        return [self._decode(self.encode_image(self.images[s:s + 1]) if isinstance(s, int) else self._text(s))
                for s in segments]

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor:
        return self.segment_logits(tokens)[-1]

    def decode(self, token: int) -> torch.Tensor:
        return self._decode(self._text([token]))


def stock_multimodal_generate(folder: str | Path, segments: Sequence, pixels: torch.Tensor,
                              max_new_tokens: int) -> str:
    """Greedy text from ExecuTorch's own C++ `MultimodalRunner` (token ids and preprocessed pixels in)."""
    load_executorch_kernels()
    from executorch.extension.llm.runner import (GenerationConfig, MultimodalRunner, make_image_input,
                                                 make_token_input)

    folder = Path(folder)
    check_pte_header(folder / "model.pte")
    try:
        runner = MultimodalRunner(str(folder / "model.pte"), str(folder / "tokenizer.model"),
                                  data_file(folder / "model.pte"))
    except RuntimeError as e:
        raise GemmaEdgeError(f"{folder}: ExecuTorch's MultimodalRunner refused the artifact ({e})") from None
    inputs = [make_image_input(pixels[s:s + 1].contiguous()) if isinstance(s, int) else make_token_input(list(s))
              for s in segments]
    pieces: list[str] = []
    config = GenerationConfig(echo=False, max_new_tokens=max_new_tokens, temperature=0.0, num_bos=0)
    runner.generate(inputs, config, token_callback=pieces.append)
    return join_byte_pieces("".join(pieces))

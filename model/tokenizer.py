"""Gemma's SentencePiece tokenizer: load `tokenizer.model`, rebuild one from a vocabulary, chat template."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb

from .errors import GemmaEdgeError

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4


def sentencepiece_model_from_vocab(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int],
                                   unk_id: int, bos_id: int, eos_id: int, pad_id: int) -> bytes:
    """Serialise a Gemma-style BPE SentencePiece model (byte fallback, no dummy prefix).

    `types` use SentencePiece's numbering (llama.cpp's GGUF uses the same). Two repairs make the result
    load everywhere and tokenize chat prompts as Gemma's own tokenizer does: the unknown piece is typed
    UNKNOWN (llama.cpp marks it CONTROL, which ExecuTorch's SentencePiece refuses), and control pieces
    other than pad/bos/eos/unk (`<start_of_turn>`, `<end_of_turn>`, ...) become USER_DEFINED, so their
    spelling in text encodes to their id. llama.cpp also writes user-defined pieces with "▁" turned
    into spaces ("pre-normalized"); SentencePiece matches them after escaping spaces, so we turn them back.
    """
    if not (len(pieces) == len(scores) == len(types)):
        raise GemmaEdgeError(f"vocabulary lists differ in length: {len(pieces)} pieces, "
                             f"{len(scores)} scores, {len(types)} types")
    m = sp_pb.ModelProto()
    keep_control = {pad_id, bos_id, eos_id}
    for i, (piece, score, kind) in enumerate(zip(pieces, scores, types)):
        if i == unk_id:
            kind = _UNKNOWN
        elif kind == _CONTROL and i not in keep_control:
            kind = _USER_DEFINED
        elif kind == _UNKNOWN:
            kind = _NORMAL
        if kind == _USER_DEFINED:
            piece = piece.replace(" ", "\u2581")
        m.pieces.add(piece=piece, score=float(score), type=kind)
    t = m.trainer_spec
    t.model_type = sp_pb.TrainerSpec.BPE
    t.vocab_size = len(pieces)
    t.byte_fallback = True
    t.split_digits = True
    t.allow_whitespace_only_pieces = True
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = unk_id, bos_id, eos_id, pad_id
    t.unk_piece, t.bos_piece, t.eos_piece, t.pad_piece = (
        pieces[unk_id], pieces[bos_id], pieces[eos_id], pieces[pad_id])
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = False
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return m.SerializeToString()


class Tokenizer:
    """A SentencePiece model plus Gemma's special ids; encode adds BOS by default. `bos_id`: the model's
    BOS (config.json) for a tokenizer.model rebuilt without one (SentencePiece then answers -1)."""

    def __init__(self, model_bytes: bytes, source: str = "tokenizer.model", bos_id: int | None = None):
        self.serialized = model_bytes
        self.source = source
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError) as e:
            raise GemmaEdgeError(f"{source}: not a SentencePiece model ({e})") from None
        self.vocab_size = self.sp.GetPieceSize()
        self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
        if self.bos_id < 0 and bos_id is not None:
            self.bos_id = bos_id
        self.end_of_turn_id = self._id_or_none(END_OF_TURN)
        self.start_of_turn_id = self._id_or_none(START_OF_TURN)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        try:
            return cls(path.read_bytes(), str(path))
        except FileNotFoundError:
            raise GemmaEdgeError(f"{path}: no tokenizer.model; copy the checkpoint's tokenizer.model here") from None
        except IsADirectoryError:
            raise GemmaEdgeError(f"{path}: is a folder, not a file; copy the checkpoint's tokenizer.model here") from None

    def _id_or_none(self, piece: str) -> int | None:
        i = self.sp.PieceToId(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.IdToPiece(i) else i

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Generation stops at `<eos>` or `<end_of_turn>`."""
        return tuple(i for i in (self.eos_id, self.end_of_turn_id) if i is not None and i >= 0)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        if add_bos and self.bos_id < 0:
            raise GemmaEdgeError(f"{self.source}: has no <bos> id and none was given (config.json bos_token_id); "
                                 "use the checkpoint's own tokenizer.model")
        ids = self.sp.EncodeAsIds(text)
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self.sp.IdToPiece(int(token_id))


class StreamDecoder:
    """Turns a growing token list into text pieces, holding back incomplete UTF-8 byte sequences."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted:], len(text)
        return new


@dataclass(frozen=True)
class Message:
    role: str  # "system", "user", "assistant" (or "model")
    content: str


def format_chat(messages: Sequence[Message | dict], add_generation_prompt: bool = True) -> str:
    """Gemma 3's chat template (as in its HF tokenizer_config), without the leading `<bos>` text.

    A system message is folded into the first user turn; roles must alternate user/model.
    """
    msgs = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
    prefix = ""
    if msgs and msgs[0].role == "system":
        prefix, msgs = msgs[0].content + "\n\n", msgs[1:]
    out = []
    for i, m in enumerate(msgs):
        if (m.role == "user") != (i % 2 == 0):
            raise GemmaEdgeError("chat roles must alternate user/assistant/user/..., "
                                 f"but message {i} has role {m.role!r}")
        role = "model" if m.role in ("assistant", "model") else m.role
        out.append(f"{START_OF_TURN}{role}\n{prefix if i == 0 else ''}{m.content.strip()}{END_OF_TURN}\n")
    if add_generation_prompt:
        out.append(f"{START_OF_TURN}model\n")
    return "".join(out)


def format_chat_continuation(content: str, unfed: str = "") -> str:
    """The text a chat sends for its next user turn when the runner's KV cache already holds the
    conversation (ExecuTorch's LlmModule keeps it between `generate` calls). ExecuTorch's runner feeds each
    generated token to the model only when it generates the next one, so the reply's last token is emitted
    but never cached: after a reply that ended at `<end_of_turn>` that is the marker this text starts with;
    after a reply cut at the token limit (or stopped), `unfed` is that last token's text, sent again before
    the turn is closed. Then the new user turn and the generation prompt."""
    return f"{unfed}{END_OF_TURN}\n{START_OF_TURN}user\n{content.strip()}{END_OF_TURN}\n{START_OF_TURN}model\n"


def tiny_tokenizer_model(extra_pieces: int = 96) -> bytes:
    """A small Gemma-shaped vocabulary (specials, 256 byte pieces, printable ASCII, a few merges) for tests."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", START_OF_TURN, END_OF_TURN]
    pieces = list(specials)
    types = [_CONTROL] * len(specials)
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    chars = ["\u2581"] + [chr(c) for c in range(33, 127)] + ["\n"]
    merges = ["\u2581t", "he", "in", "er", "an", "\u2581a", "re", "on", "\u2581the", "at", "en", "nd", "ed",
              "es", "or", "is", "it", "ou", "\u2581s", "\u2581w", "ing", "\u2581c", "ar", "al", "le", "st"]
    merges = merges[:extra_pieces]
    pieces += chars + merges
    types += [_NORMAL] * (len(chars) + len(merges))
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(chars))] + \
             [-1.0 - i for i in range(len(merges))]
    return sentencepiece_model_from_vocab(pieces, scores, types, unk_id=3, bos_id=2, eos_id=1, pad_id=0)

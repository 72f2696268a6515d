"""Calibration and evaluation text: the user's files, data-free samples from the float model, held-out text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, TypeVar

import torch
from tqdm import tqdm

from gemma_edge.model import LoadedModel, Sampling
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.generate import sample
from gemma_edge.model.tokenizer import Tokenizer

T = TypeVar("T")


def read_texts(paths: Sequence[str | Path]) -> list[str]:
    """Plain-text files (one document each) or JSONL files (a "text" field per line)."""
    texts: list[str] = []
    for p in map(Path, paths):
        try:
            raw = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GemmaEdgeError(f"{p}: no such calibration file") from None
        except UnicodeDecodeError:
            raise GemmaEdgeError(f"{p}: not UTF-8 text; calibration files are .txt or .jsonl") from None
        if p.suffix == ".jsonl":
            for i, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    texts.append(str(json.loads(line)["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise GemmaEdgeError(f"{p}:{i}: each JSONL line needs a \"text\" field") from None
        elif raw.strip():
            texts.append(raw)
    if not any(t.strip() for t in texts):
        raise GemmaEdgeError(f"calibration set is empty: {', '.join(map(str, paths)) or 'no files given'} "
                             "holds no text")
    return texts


def token_sequences(texts: Sequence[str], tokenizer: Tokenizer, seq_len: int, max_sequences: int) -> list[list[int]]:
    """Concatenate the documents (each with BOS) and cut into sequences of `seq_len` tokens."""
    stream: list[int] = []
    for t in texts:
        stream += tokenizer.encode(t)
    seqs = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)][:max_sequences]
    if not seqs:
        raise GemmaEdgeError(f"calibration text has {len(stream)} tokens, fewer than one sequence of {seq_len}; "
                             "add text or lower --seq-len")
    return seqs


SAMPLE_BATCH = 8  # sequences sampled side by side: one pass over the weights per step serves them all
TEMPERATURE_1 = Sampling(temperature=1.0)  # each sequence's generator carries its seed


@torch.no_grad()
def sample_sequences(loaded: LoadedModel, n: int, seq_len: int, seed: int = 0, progress: bool = True,
                     prompts: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Data-free calibration: `n` sequences the float model writes itself (temperature 1), sequence i with
    seed `seed + i`, starting from prompt i mod len(prompts) (by default `prompts.calibration_prompts`:
    requests in several languages and for code) cut to at most half the sequence; `prompts=[[bos]]` samples
    from BOS alone. They are decoded SAMPLE_BATCH at a time, which at 4B turns 8 x 255 steps, each reading
    all 8 GB of weights, into 255. Each sequence draws from its own generator, so it equals the sequence
    decoded alone unless a batched matmul's rounding moves a logit across a draw's boundary (a tiny model's
    are identical: tests/test_ptq.py)."""
    from .prompts import calibration_prompts

    model = loaded.model
    if prompts is None:
        prompts = calibration_prompts(loaded.tokenizer)
    starts = [list(prompts[i % len(prompts)][:max(1, seq_len // 2)]) for i in range(n)]
    seqs: list[list[int]] = []
    bar = tqdm(total=n * (seq_len - 1), desc="sample calibration text", unit="tok", disable=not progress)
    try:
        for first in range(0, n, SAMPLE_BATCH):
            batch = [[p[0]] for p in starts[first:first + SAMPLE_BATCH]]
            generators = [torch.Generator().manual_seed(seed + first + i) for i in range(len(batch))]
            model.reset_caches(len(batch))
            for pos in range(seq_len - 1):
                tokens = torch.tensor([[s[-1]] for s in batch])
                logits = model(tokens, torch.tensor([pos]), last_logits_only=True)[:, -1].float()
                for s, p, row, g in zip(batch, starts[first:], logits, generators):
                    s.append(p[pos + 1] if pos + 1 < len(p) else sample(row, TEMPERATURE_1, g))
                bar.update(len(batch))
            seqs += batch
    finally:
        model.reset_caches()
        bar.close()
    return seqs


def _pydoc_topics(max_chars: int) -> tuple[list[str], list[str]]:
    """CPython's language-reference topics in name order, split where `max_chars` characters are reached."""
    from pydoc_data.topics import topics

    used, total = [], 0
    for k in sorted(topics):
        used.append(topics[k].strip())
        total += len(used[-1])
        if total >= max_chars:
            break
    rest = [topics[k].strip() for k in sorted(topics)[len(used):]]
    return used, rest


HELD_OUT_DIR = Path(__file__).parent / "heldout"
DOMAINS = ("english", "chat", "code", "python-docs", "german", "french", "chinese")


def held_out_domains(names: Sequence[str] = DOMAINS) -> dict[str, str]:
    """The evaluation text of each domain (heldout/README.md says where each comes from). Calibration and
    QAT never read these: calibration samples its default text from the float model, QAT trains by default
    on `training_documents()`, which shares no passage with them (tests/test_ptq.py)."""
    import inspect
    import textwrap

    from gemma_edge.model.tokenizer import format_chat

    unknown = sorted(set(names) - set(DOMAINS))
    if unknown:
        raise GemmaEdgeError(f"unknown evaluation domain {', '.join(unknown)}; choose from {', '.join(DOMAINS)}")
    files = {"english": "english.txt", "german": "german.txt", "french": "french.txt", "chinese": "chinese.txt"}
    out = {}
    for name in names:
        if name in files:
            out[name] = (HELD_OUT_DIR / files[name]).read_text(encoding="utf-8")
        elif name == "chat":
            chats = json.loads((HELD_OUT_DIR / "chat.json").read_text(encoding="utf-8"))
            out[name] = "".join(format_chat(c, add_generation_prompt=False) for c in chats)
        elif name == "code":
            out[name] = inspect.getsource(textwrap)
        else:
            out[name] = held_out_text()
    return out


def held_out_text(max_chars: int = 40_000) -> str:
    """Default evaluation text: the Python language reference shipped with CPython (`pydoc_data`).

    Natural English technical prose that is on every machine, and never used for calibration by default
    (data-free calibration samples the model instead)."""
    return "\n\n".join(_pydoc_topics(max_chars)[0])[:max_chars]


TRAINING_CODE = ("json.decoder", "json.encoder", "csv", "string", "fractions", "difflib", "calendar", "shlex")


def training_documents(held_out_chars: int = 40_000, chunk_chars: int = 4_000) -> list[str]:
    """QAT / calibration text in three forms, interleaved so that any prefix mixes them: the language-reference
    topics `held_out_text` does not use, as prose and (every other one) as a chat turn in Gemma's template
    answering a request for that topic, and CPython modules (`TRAINING_CODE`, not the `code` domain's
    `textwrap`) cut into `chunk_chars` pieces. Nothing here is in `held_out_domains()`; no other language
    ships with CPython, so German, French and Chinese stay unseen (docs/quantization.md)."""
    import importlib
    import inspect

    from gemma_edge.model.tokenizer import format_chat

    topics = _training_topics(held_out_chars)
    prose = topics[0::2]
    chats = [format_chat([{"role": "user", "content": f"Explain this part of the Python language reference: "
                                                       f"{t.splitlines()[0].strip()}"},
                          {"role": "model", "content": t}], add_generation_prompt=False) for t in topics[1::2]]
    code = []
    for name in TRAINING_CODE:
        src = inspect.getsource(importlib.import_module(name))
        code += [src[i:i + chunk_chars] for i in range(0, len(src), chunk_chars)]
    return interleave(prose, chats, code)


def interleave(*kinds: Sequence[T]) -> list[T]:
    """The first of each kind, then the second of each, ...: any prefix mixes the kinds."""
    return [kind[i] for i in range(max(map(len, kinds), default=0)) for kind in kinds if i < len(kind)]


def _training_topics(held_out_chars: int) -> list[str]:
    """The language-reference topics `held_out_text(held_out_chars)` does not use, less every paragraph that
    the held-out text contains: the topics are pages that repeat each other's sections."""
    held_out = held_out_text(held_out_chars)
    out = []
    for topic in _pydoc_topics(held_out_chars)[1]:
        kept = [p for p in topic.split("\n\n") if p.strip() and p not in held_out]
        if kept:
            out.append("\n\n".join(kept))
    return out


def pydoc_training_text(held_out_chars: int = 40_000) -> str:
    """In-domain training text for QAT that shares no paragraph with `held_out_text(held_out_chars)`."""
    return "\n\n".join(_training_topics(held_out_chars))

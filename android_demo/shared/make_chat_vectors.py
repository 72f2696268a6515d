"""Write chat_vectors.json: conversations and the exact prompt strings gemma-edge's chat template makes.

The Android app's Java core formats prompts itself; it and the Python toolkit must agree byte for byte,
so both test suites read this file. Regenerate after changing `gemma_edge.model.format_chat`:

    python android_demo/shared/make_chat_vectors.py

Token counts come from the bundled Gemma 3 270M tokenizer (BOS included, as the runner adds it); the
Java side uses them to check that its context-budget estimate never undercounts.
"""

from __future__ import annotations

import json
from pathlib import Path

from gemma_edge.model import GemmaEdgeError, Tokenizer, format_chat, format_chat_continuation

OUT = Path(__file__).with_name("chat_vectors.json")

U, M, S = "user", "model", "system"

CONVERSATIONS: list[tuple[str, list[tuple[str, str]], bool]] = [
    ("single user turn", [(U, "Name three rivers in Europe.")], True),
    ("multi-turn", [(U, "Hi!"), (M, "Hello! How can I help?"), (U, "Tell me a joke.")], True),
    ("assistant role is spelled model", [(U, "Hi"), ("assistant", "Hey"), (U, "Bye")], True),
    ("system prompt folds into the first user turn", [(S, "Answer in French."), (U, "Good morning")], True),
    ("system prompt with history", [(S, "Be brief."), (U, "2+2?"), (M, "4"), (U, "3+3?")], True),
    ("surrounding whitespace is trimmed", [(U, "  \n\tpadded question \n ")], True),
    ("python whitespace: NBSP, ideographic space, \\x1c, \\x85", [(U, "\u00a0\u3000\x1c\x85core\u2028\u205f")], True),
    ("zero-width space is not whitespace", [(U, "\u200bkept\u200b")], True),
    ("inner newlines and markup stay", [(U, "line 1\n\nline 2\n```py\nprint(1)\n```")], True),
    ("non-ASCII text", [(U, "Übersetze: 猫が好きです 🐱 — ¿qué?")], True),
    ("turn markers inside content are not escaped", [(U, "say <end_of_turn> literally")], True),
    ("empty message", [(U, "")], True),
    ("history without generation prompt", [(U, "a"), (M, "b")], False),
    ("ends on a model turn, generation prompt added", [(U, "a"), (M, "b")], True),
]

# Later turns of a chat that keeps the KV cache: the text sent for each new user message (after a reply that
# ended at <end_of_turn>, or with the unfed last piece of a reply cut at the token limit).
CONTINUATIONS = [("Which of them is the longest?", ""), ("  padded \n", ""), ("Übersetze: 猫 🐱", ""), ("", ""),
                 ("And then?", " Rhine"), ("Go on", "\n")]

ERRORS: list[tuple[str, list[tuple[str, str]]]] = [
    ("two user turns in a row", [(U, "a"), (U, "b")]),
    ("conversation starts with the model", [(M, "hello")]),
]


def _messages(turns: list[tuple[str, str]]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def build(tokenizer: Tokenizer) -> dict:
    """The vectors as a JSON-ready dict (deterministic: same input, same bytes)."""
    vectors = []
    for name, turns, gen in CONVERSATIONS:
        prompt = format_chat(_messages(turns), add_generation_prompt=gen)
        vectors.append({"name": name, "messages": _messages(turns), "add_generation_prompt": gen,
                        "prompt": prompt, "prompt_tokens": len(tokenizer.encode(prompt)),
                        "prompt_utf8_bytes": len(prompt.encode())})
    errors = []
    for name, turns in ERRORS:
        try:
            format_chat(_messages(turns))
        except GemmaEdgeError:
            errors.append({"name": name, "messages": _messages(turns)})
        else:
            raise AssertionError(f"format_chat accepted the invalid conversation {name!r}")
    return {"about": "Gemma 3 chat-template vectors from gemma_edge.model.format_chat; "
                     "regenerate with python android_demo/shared/make_chat_vectors.py",
            "stop_markers": ["<end_of_turn>", "<eos>"],
            "python_whitespace": [c for c in range(0x110000) if chr(c).isspace()],
            "vectors": vectors, "invalid": errors,
            "continuations": [{"content": c, "unfed": u, "text": format_chat_continuation(c, u)}
                              for c, u in CONTINUATIONS]}


def render(vectors: dict) -> str:
    return json.dumps(vectors, ensure_ascii=True, indent=1) + "\n"


def main() -> None:
    from gemma_edge.model import read_checkpoint
    from gemma_edge.model.bundled import bundled_gguf

    _, _, tokenizer_bytes = read_checkpoint(bundled_gguf(), progress=False)
    OUT.write_text(render(build(Tokenizer(tokenizer_bytes))))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

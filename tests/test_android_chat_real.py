"""The Android app's multi-turn chat on the real Gemma 3 270M .pte, driven as the app drives ExecuTorch's
LlmModule (whose C++ TextLLMRunner is here through its Python binding): `<bos>` only on the first
`generate` after a reset (the JNI's needs_bos_ with numBos 1), later turns send only their own text
(`format_chat_continuation`) onto the kept KV cache. Checked against the reference model run on the whole
conversation, and against what the app does when it must reset: prefill the conversation again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma_edge.model import ReferenceRunner, format_chat, format_chat_continuation, generate
from gemma_edge.runtimes.executorch_runner import join_byte_pieces, load_executorch_kernels

pytestmark = [pytest.mark.real, pytest.mark.xdist_group("real-pte")]

TURNS = ["Name three rivers in Europe.", "Which of them is the longest?", "Which country does it start in?"]
REPLY_TOKENS = 96
END = "<end_of_turn>"


class AppRunner:
    """TextLLMRunner called as LlmModule calls it and as the app's ChatSession drives it: BOS on the first
    generate after a reset only; the token budget as the app sets it (seq_len = what the cache holds + the
    prompt's upper bound + the reply, max_new_tokens = the reply: the runner counts seq_len from position 0
    when the .pte's prefill call is shorter than its context); what the cache holds counted from the
    runner's own stats."""

    def __init__(self, folder: Path):
        load_executorch_kernels()
        from executorch.extension.llm.runner import TextLLMRunner

        self.runner = TextLLMRunner(str(folder / "model.pte"), str(folder / "tokenizer.model"))
        self.needs_bos = True
        self.cached = 0

    def reset(self) -> None:
        self.runner.reset()
        self.needs_bos, self.cached = True, 0

    def generate(self, prompt: str, max_new_tokens: int = REPLY_TOKENS) -> tuple[list[str], dict]:
        from executorch.extension.llm.runner import GenerationConfig

        pieces, stats = [], []
        config = GenerationConfig(echo=False, temperature=0.0, num_bos=1 if self.needs_bos else 0,
                                  seq_len=self.cached + bound(prompt) + REPLY_TOKENS, max_new_tokens=max_new_tokens)
        self.runner.generate(prompt, config, token_callback=pieces.append, stats_callback=stats.append)
        self.needs_bos = False
        stats = json.loads(stats[0].to_json_string())
        self.cached += stats["prompt_tokens"] + stats["generated_tokens"]  # all but the last token emitted
        return pieces, stats


def bound(text: str) -> int:
    """The app's TokenCounter.UTF8_BOUND: BOS + one per turn marker + one per other UTF-8 byte."""
    markers = ("<start_of_turn>", END)
    return 1 + sum(text.count(m) for m in markers) + len(text.encode()) - sum(len(m) * text.count(m) for m in markers)


def ttft_ms(stats: dict) -> int:
    return stats["first_token_ms"] - stats["inference_start_ms"]


def chat(folder: Path) -> dict:
    """Three turns on the kept cache, as ChatSession sends them; then turn 3 again after a reset and a
    prefill of the whole conversation (what the app does when the cache cannot be continued exactly)."""
    app = AppRunner(folder)
    prompts, replies, stats, unfed = [], [], [], ""
    for i, user in enumerate(TURNS):
        prompt = (format_chat([{"role": "user", "content": user}]) if i == 0
                  else format_chat_continuation(user, unfed))
        pieces, s = app.generate(prompt)
        assert len(pieces) == s["generated_tokens"] + 1  # one piece per token: the last one is known exactly
        # the runner never fed its last token: the <end_of_turn> it stopped at, or the cut reply's last piece
        unfed = "" if pieces[-1] == END else pieces[-1]
        prompts.append(prompt)
        replies.append(join_byte_pieces("".join(pieces)))
        stats.append(s)
    history = []
    for user, reply in zip(TURNS[:2], replies):
        history += [{"role": "user", "content": user}, {"role": "model", "content": reply.removesuffix(END)}]
    whole = format_chat(history + [{"role": "user", "content": TURNS[2]}])
    app.reset()
    pieces, reset_stats = app.generate(whole, max_new_tokens=stats[2]["generated_tokens"] + 1)  # as many tokens
    return {"prompts": prompts, "replies": replies, "stats": stats, "whole_conversation": whole,
            "reset_reply": join_byte_pieces("".join(pieces)), "reset_stats": reset_stats}


def test_three_turns_on_the_kept_cache_equal_the_reference_and_a_fresh_prefill(real_export, real_model):
    """The bundled 270M is the pretrained (not instruction-tuned) model: its replies run to the token limit
    instead of ending at <end_of_turn>, so each later turn starts with the cut reply's unfed last piece."""
    _, folder = real_export("pte", "float32")  # exact under the stock runner: greedy tokens comparable
    result = chat(folder)
    tok, model = real_model.tokenizer, real_model.model
    ids: list[int] = []
    for i, (prompt, reply, s) in enumerate(zip(result["prompts"], result["replies"], result["stats"])):
        new = tok.encode(prompt, add_bos=i == 0)
        assert s["prompt_tokens"] == len(new), f"turn {i + 1}: <bos> on the first turn only"
        ids += new
        # the reference on the whole conversation so far, from scratch, for as many tokens as the runner gave
        expected = generate(ReferenceRunner(model), ids, s["generated_tokens"] + 1, stop_ids=tok.stop_ids)
        assert reply == tok.decode(expected), f"turn {i + 1}"
        ids += expected[:-1]  # the last token: emitted, never fed
    assert result["reset_reply"] == result["replies"][2]
    print(f"\nturn 3 time to first token: kept cache {ttft_ms(result['stats'][2])} ms "
          f"({result['stats'][2]['prompt_tokens']} new tokens), reset and prefill {ttft_ms(result['reset_stats'])} ms "
          f"({result['reset_stats']['prompt_tokens']} tokens)")

"""Reference model vs transformers' Gemma3ForCausalLM on the bundled Gemma 3 270M (figures for docs/reference.md).

Run: python docs/figures/reference_parity.py   (needs the `test` extra: transformers and the bundled GGUF)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from conftest import LONG_TEXT  # noqa: E402

from gemma_edge.model import ReferenceRunner, convert, format_chat, generate, load  # noqa: E402
from gemma_edge.model.bundled import bundled_gguf  # noqa: E402


def main() -> None:
    from transformers import Gemma3ForCausalLM

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = convert(bundled_gguf(), Path(tmp) / "gemma-3-270m", progress=False)
        ours = load(folder, max_seq_len=2048, progress=False)
        tok = ours.tokenizer
        hf = {impl: Gemma3ForCausalLM.from_pretrained(folder, attn_implementation=impl, dtype=torch.float32).eval()
              for impl in ("eager", "sdpa")}
        prompts = {
            "fox (5 tokens)": tok.encode("The quick brown fox"),
            "code": tok.encode("def fibonacci(n):\n    "),
            "chat": tok.encode(format_chat([{"role": "user", "content": "Name three rivers in Europe."}])),
            "long (700 tokens)": tok.encode(LONG_TEXT)[:700],
        }
        print("| prompt | tokens | max abs dlogit vs HF eager | HF eager vs HF sdpa | top-1 agreement | greedy 32 tokens equal |")
        print("|---|---|---|---|---|---|")
        for name, ids in prompts.items():
            t = torch.tensor([ids])
            with torch.no_grad():
                eager, sdpa = hf["eager"](t).logits[0], hf["sdpa"](t).logits[0]
                ours.model.reset_caches()
                got = ours.model(t, torch.arange(len(ids)))[0]
                hf_greedy = hf["eager"].generate(t, max_new_tokens=32, do_sample=False, eos_token_id=None,
                                                 pad_token_id=0)[0, len(ids):].tolist()
            greedy = generate(ReferenceRunner(ours.model), ids, 32)
            top1 = (got.argmax(-1) == eager.argmax(-1)).float().mean().item()
            print(f"| {name} | {len(ids)} | {(got - eager).abs().max().item():.2e} | "
                  f"{(eager - sdpa).abs().max().item():.2e} | {top1:.2%} | {greedy == hf_greedy} |")


if __name__ == "__main__":
    main()

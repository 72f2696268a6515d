"""Parity figures of exported .pte folders on the real Gemma 3 270M (for docs/executorch.md).

Run: python docs/figures/executorch_parity.py FLOAT_DIR PTE_F32 [Q_DIR PTE_DIR ...]
e.g. gemma-edge convert bundled --out g270 && gemma-edge export pte g270 --out pte-f32
     gemma-edge quantize bundled --recipe 8da4w --out q-8da4w && gemma-edge export pte q-8da4w --out pte-8da4w
     python docs/figures/executorch_parity.py g270 pte-f32 q-8da4w pte-8da4w
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from conftest import LONG_TEXT  # noqa: E402

from gemma_edge.model import ReferenceRunner, format_chat, generate, load  # noqa: E402
from gemma_edge.runtimes.executorch_runner import ExecuTorchRunner, StockTextRunner  # noqa: E402

PROMPTS = ["The quick brown fox", "def fibonacci(n):\n    ",
           format_chat([{"role": "user", "content": "Name three rivers in Europe."}])]


def teacher_forced(pte: Path, model, tokens: list[int], prefill: int) -> tuple[float, float]:
    runner = ExecuTorchRunner(pte / "model.pte")
    got = torch.stack([runner.prefill(tokens[:prefill])] + [runner.decode(t) for t in tokens[prefill:]])
    model.reset_caches()
    with torch.no_grad():
        ref = model(torch.tensor([tokens]), torch.arange(len(tokens)))[0, prefill - 1:]
    return (got - ref).abs().max().item(), (got.argmax(-1) == ref.argmax(-1)).float().mean().item()


def first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(pairs: list[tuple[Path, Path]]) -> None:
    torch.set_num_threads(2)
    print("| artifact | teacher-forced, 700-token prefill + 40 steps: max abs dlogit | top-1 | "
          "top-1 over the test's 601-token sequence | tokens until greedy divergence (3 prompts) |")
    print("|---|---|---|---|---|")
    for source, pte in pairs:
        loaded = load(source, max_seq_len=1024, progress=False)
        tok = loaded.tokenizer
        diff, top1 = teacher_forced(pte, loaded.model, tok.encode(LONG_TEXT)[:740], prefill=700)
        passage = tok.encode(LONG_TEXT)
        _, top1_test = teacher_forced(pte, loaded.model, [2] + passage[300:600] + passage[:300], prefill=200)
        stock = StockTextRunner(pte)
        spans = []
        for prompt in PROMPTS:
            ref = generate(ReferenceRunner(loaded.model), tok.encode(prompt), 32)
            ours = generate(ExecuTorchRunner(pte / "model.pte"), tok.encode(prompt), 32)
            text, _ = stock.generate(prompt, 32)
            assert text == tok.decode(ours), "stock runner and executorch.runtime disagree"
            spans.append(first_divergence(ref, ours))
        print(f"| {pte.name} (vs {source.name}) | {diff:.2e} | {top1:.1%} | {top1_test:.1%} | "
              f"{' / '.join(map(str, spans))} |", flush=True)


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    main(list(zip(args[::2], args[1::2])))

"""Parity figures of exported folders (.pte or ONNX) on the real Gemma 3 270M, for docs/.

Run: python docs/figures/artifact_parity.py SOURCE ARTIFACT [SOURCE ARTIFACT ...]
e.g. gemma-edge convert bundled --out g270 && gemma-edge export pte g270 --out pte-f32
     gemma-edge quantize bundled --recipe 8da4w --out q-8da4w && gemma-edge export pte q-8da4w --out pte-8da4w
     gemma-edge export onnx g270 --out onnx-f32
     python docs/figures/artifact_parity.py g270 pte-f32 q-8da4w pte-8da4w g270 onnx-f32

Each artifact is compared with the reference built as it computes (manifest "activations"), and each
figure is printed next to that reference's noise floor: the same figure for the reference against itself
with its embedding scale nudged by 2^-22 (gemma_edge.runtimes.parity). Greedy text comes from the
runtime's own generation loop: ExecuTorch's TextLLMRunner for .pte, onnxruntime-genai for ONNX.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from conftest import LONG_TEXT, REAL_PROMPTS as PROMPTS  # noqa: E402

from gemma_edge.model import ReferenceRunner, generate  # noqa: E402
from gemma_edge.runtimes import open_runner  # noqa: E402
from gemma_edge.runtimes.parity import (first_divergence, noise_floor, nudged, reference_for,  # noqa: E402
                                        reference_logits, runner_logits, top1_agreement)

def runtime_greedy(folder: Path, runner, tok):
    """prompt -> 32 greedy ids from the runtime's own loop. For .pte, ExecuTorch's TextLLMRunner must print
    exactly the text of our executorch.runtime loop, whose ids are returned; for ONNX, onnxruntime-genai's ids."""
    if (folder / "model.pte").exists():
        from gemma_edge.runtimes.executorch_runner import StockTextRunner

        stock = StockTextRunner(folder)

        def pte(prompt: str) -> list[int]:
            ours = generate(runner, tok.encode(prompt), 32, stop_ids=tok.stop_ids)
            text, _ = stock.generate(prompt, 32)
            assert text == tok.decode(ours), "stock runner and executorch.runtime disagree"
            return ours
        return pte
    from gemma_edge.runtimes.genai_runner import GenAIRunner

    genai = GenAIRunner(folder)
    return lambda prompt: genai.generate(tok.encode(prompt), 32)


def main(pairs: list[tuple[Path, Path]]) -> None:
    torch.set_num_threads(2)
    print("| artifact | 700-token prefill + 40 steps: max abs dlogit | top-1 | top-1 on the test's 601-token "
          "sequence (noise floor) | tokens until greedy divergence, runtime's own loop, 3 prompts (noise floor) |")
    print("|---|---|---|---|---|")
    for source, folder in pairs:
        loaded = reference_for(folder, source, max_seq_len=1024)
        model, tok = loaded.model, loaded.tokenizer
        runner = open_runner(folder, threads=2)
        passage = tok.encode(LONG_TEXT)
        got, ref = runner_logits(runner, passage[:740], 700), reference_logits(model, passage[:740], 700)
        diff, top1 = (got - ref).abs().max().item(), top1_agreement(got, ref)
        test_seq = [2] + passage[300:600] + passage[:300]
        ref_test = reference_logits(model, test_seq, 200)
        top1_test = top1_agreement(runner_logits(runner, test_seq, 200), ref_test)
        floor = noise_floor(model, test_seq, 200, base=ref_test)
        greedy = runtime_greedy(folder, runner, tok)
        spans, floors = [], []
        for prompt in PROMPTS:
            ids = tok.encode(prompt)
            ref_tokens = generate(ReferenceRunner(model), ids, 32, stop_ids=tok.stop_ids)
            with nudged(model):
                floors.append(first_divergence(
                    ref_tokens, generate(ReferenceRunner(model), ids, 32, stop_ids=tok.stop_ids)))
            spans.append(first_divergence(ref_tokens, greedy(prompt)))
        print(f"| {folder.name} (vs {source.name}) | {diff:.2e} | {top1:.1%} | {top1_test:.1%} ({floor:.1%}) | "
              f"{' / '.join(map(str, spans))} ({' / '.join(map(str, floors))}) |", flush=True)


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    main(list(zip(args[::2], args[1::2])))

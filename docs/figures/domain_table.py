"""Quality per held-out domain of several quantized checkpoints of the bundled Gemma 3 270M, as one table.

Run: python docs/figures/domain_table.py LABEL=QUANTIZED_DIR [LABEL=QUANTIZED_DIR ...]
Each checkpoint is scored against the float model on every domain of `held_out_domains()` (at most 2,048
tokens each, windows of 512, the short last window kept) — what `gemma-edge eval Q --against bundled`
prints, one model per column group. Prints a markdown table: perplexity, KL(float‖q) and top-1 agreement
per domain and model, the float perplexity first.
"""

from __future__ import annotations

import sys

from gemma_edge.calibration.checkpoint import QuantizedCheckpoint
from gemma_edge.calibration.data import held_out_domains
from gemma_edge.calibration.evaluate import evaluate_domains
from gemma_edge.model import load
from gemma_edge.model.bundled import bundled_gguf

TOKENS, SEQ_LEN = 2048, 512


def main(models: list[tuple[str, str]]) -> None:
    loaded = load(bundled_gguf(), max_seq_len=SEQ_LEN, progress=False)
    texts = {name: loaded.tokenizer.encode(text)[:TOKENS] for name, text in held_out_domains().items()}
    results = {}
    for label, folder in models:
        results[label] = evaluate_domains(QuantizedCheckpoint.load(folder).build_model(SEQ_LEN), texts, SEQ_LEN,
                                          loaded.model)
        print(f"{label}: " + "  ".join(f"{d} {r.kl_to_float:.3f}" for d, r in results[label].items()), flush=True)
    domains = [*texts, "all"]
    first = next(iter(results.values()))
    print("\n| model | " + " | ".join(domains) + " |")
    print("|---|" + "---|" * len(domains))
    print("| float32 perplexity | " + " | ".join(f"{first[d].reference_perplexity:.2f}" for d in domains) + " |")
    for label, row in results.items():
        print(f"| {label}: perplexity | " + " | ".join(f"{row[d].perplexity:.2f}" for d in domains) + " |")
        print(f"| {label}: KL(float‖q) | " + " | ".join(f"{row[d].kl_to_float:.3f}" for d in domains) + " |")
        print(f"| {label}: top-1 | " + " | ".join(f"{row[d].top1_agreement:.1%}" for d in domains) + " |")
    print("\ntokens per domain: " + ", ".join(f"{d} {first[d].tokens}" for d in domains))


if __name__ == "__main__":
    main([tuple(a.split("=", 1)) for a in sys.argv[1:]])

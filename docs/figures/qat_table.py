"""QAT against PTQ on the bundled Gemma 3 270M (int4-block32): perplexity on held-out text, gap closed.

Run: python docs/figures/qat_table.py OUT_DIR [STEPS [SEQUENCES]]
It writes OUT_DIR/train.txt (the language-reference topics the held-out text does not use), then runs, timed,
exactly what a user would:
    gemma-edge qat bundled --recipe int4-block32 --steps STEPS --sequences SEQUENCES --data OUT_DIR/train.txt \
        --out OUT_DIR/qat
and evaluates float, three PTQ variants and the QAT checkpoint on `held_out_text()` (windows of 512).
(Until 2026-12-01 QAT started from the training-text PTQ row; it now starts from `gemma-edge quantize`'s
default, GPTQ on data-free samples: docs/quantization.md has both.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from gemma_edge.calibration.checkpoint import QuantizedCheckpoint
from gemma_edge.calibration.data import held_out_text, pydoc_training_text, sample_sequences, token_sequences
from gemma_edge.calibration.evaluate import evaluate
from gemma_edge.calibration.observers import collect_stats
from gemma_edge.calibration.ptq import quantize_model
from gemma_edge.calibration.recipe import PRESETS
from gemma_edge.model import load
from gemma_edge.model.bundled import bundled_gguf


def main(out: Path, steps: int = 300, sequences: int = 128) -> None:
    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    train_txt = out / "train.txt"
    train_txt.write_text(pydoc_training_text())
    qat_dir = out / "qat"
    cmd = ["gemma-edge", "qat", "bundled", "--recipe", "int4-block32", "--steps", str(steps),
           "--sequences", str(sequences), "--data", str(train_txt), "--out", str(qat_dir), "--overwrite"]
    t = time.time()
    subprocess.run(cmd, check=True)
    qat_minutes = (time.time() - t) / 60

    loaded = load(bundled_gguf(), max_seq_len=512, progress=False)
    tokens = loaded.tokenizer.encode(held_out_text())
    recipe = PRESETS["int4-block32"]
    train_seqs = token_sequences([train_txt.read_text()], loaded.tokenizer, 256, 8)
    free_seqs = sample_sequences(loaded, 8, 256, seed=0, progress=False, prompts=[[loaded.config.bos_token_id]])
    rows = [("float32 (teacher)", None)]
    rows.append(("PTQ, MSE clip", quantize_model(loaded, recipe, progress=False)))
    rows.append(("PTQ, MSE clip weighted by data-free activations",
                 quantize_model(loaded, recipe, collect_stats(loaded.model, free_seqs, progress=False), progress=False)))
    rows.append(("PTQ, MSE clip weighted by training-text activations",
                 quantize_model(loaded, recipe, collect_stats(loaded.model, train_seqs, progress=False), progress=False)))
    rows.append((f"QAT, {steps} steps", QuantizedCheckpoint.load(qat_dir)))
    results = []
    for label, ckpt in rows:
        model = loaded.model if ckpt is None else ckpt.build_model(512)
        r = evaluate(model, tokens, reference=loaded.model, progress=False)
        results.append((label, r))
        print(f"{label}: perplexity {r.perplexity:.3f}, KL {r.kl_to_float:.4f}, top-1 {r.top1_agreement:.1%}", flush=True)
    float_ppl = results[0][1].perplexity
    best_ptq = min(r.perplexity for label, r in results if label.startswith("PTQ"))
    qat_ppl = results[-1][1].perplexity
    closed = (best_ptq - qat_ppl) / (best_ptq - float_ppl)
    prov = json.loads((qat_dir / "provenance.json").read_text())
    print(f"\nheld-out tokens {results[0][1].tokens}; QAT wall time {qat_minutes:.1f} min "
          f"({' '.join(cmd[:-1])}); distillation loss {prov['first_loss']:.4f} -> {prov['final_loss']:.4f}\n")
    print("| model | perplexity | KL(float‖q) | top-1 agreement |")
    print("|---|---|---|---|")
    for label, r in results:
        print(f"| {label} | {r.perplexity:.2f} | {r.kl_to_float:.3f} | {r.top1_agreement:.1%} |")
    print(f"\nQAT closes {closed:.1%} of the perplexity gap between the better PTQ ({best_ptq:.2f}) and float "
          f"({float_ppl:.2f}).")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:4]))

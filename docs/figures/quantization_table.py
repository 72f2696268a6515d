"""Every PTQ preset on the bundled Gemma 3 270M: checkpoint size, perplexity, KL to float, top-1 agreement.

Run: python docs/figures/quantization_table.py [OUT_DIR [ROW_LABEL ...]]
Equivalent CLI for one row: gemma-edge quantize bundled --recipe int4-block32 --out q && \
    gemma-edge eval q --against bundled
Held-out text: gemma_edge.calibration.data.held_out_text() (CPython's language reference); calibration,
where used, is data-free (sampled from the model), so the evaluation text is never seen by it.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from gemma_edge.calibration.data import held_out_text, sample_sequences
from gemma_edge.calibration.evaluate import evaluate
from gemma_edge.calibration.observers import collect_stats
from gemma_edge.calibration.ptq import quantize_model
from gemma_edge.calibration.recipe import PRESETS
from gemma_edge.model import load
from gemma_edge.model.bundled import bundled_gguf


def main(out_dir: Path, only: set[str] | None = None) -> None:
    torch.set_num_threads(2)
    loaded = load(bundled_gguf(), max_seq_len=512, progress=False)
    tokens = loaded.tokenizer.encode(held_out_text())
    base = evaluate(loaded.model, tokens, progress=False)
    rows = [(name, dataclasses.replace(r), False) for name, r in PRESETS.items()]
    rows += [(f"{n} (min-max)", dataclasses.replace(PRESETS[n], clip="minmax"), False)
             for n in ("int4-channel", "int4-block32")]
    rows += [(f"{n} (MSE, activation-weighted)", PRESETS[n], True) for n in ("int4-channel", "int4-block32")]
    if only:
        rows = [r for r in rows if r[0] in only]
    stats = None
    if any(weighted for _, _, weighted in rows):
        seqs = sample_sequences(loaded, 8, 256, seed=0, progress=False, prompts=[[loaded.config.bos_token_id]])
        stats = collect_stats(loaded.model, seqs, progress=False)
    print(f"held-out tokens: {base.tokens}; float32 perplexity {base.perplexity:.3f}\n")
    print("| recipe | clip | checkpoint size | perplexity | KL(float‖q) | top-1 agreement | quantize time |")
    print("|---|---|---|---|---|---|---|")
    print(f"| float32 (reference) | - | {_mib(4 * sum(p.numel() for p in loaded.model.parameters()))} | "
          f"{base.perplexity:.2f} | 0 | 100% | - |")
    for label, recipe, weighted in rows:
        st = stats if weighted else None
        t = time.time()
        ckpt = quantize_model(loaded, recipe, st, progress=False)
        seconds = time.time() - t
        folder = ckpt.save(out_dir / label.split(" ")[0] / recipe.clip / ("weighted" if st else "plain"), overwrite=True)
        size = (folder / "model.safetensors").stat().st_size
        res = evaluate(ckpt.build_model(512), tokens, reference=loaded.model, progress=False)
        clip = recipe.clip + (" + act. weights" if st else "")
        print(f"| {label.split(' ')[0]} | {clip} | {_mib(size)} | {res.perplexity:.2f} | {res.kl_to_float:.3f} | "
              f"{res.top1_agreement:.1%} | {seconds:.0f} s |", flush=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


if __name__ == "__main__":  # [OUT_DIR [ROW_LABEL ...]] — e.g. "8da4w" or "int4-block32 (min-max)"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()), set(sys.argv[2:]) or None)

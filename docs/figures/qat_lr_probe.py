"""Short QAT runs with different learning rates, scored on the first 2,100 held-out tokens (4 windows of 512).

Run: python docs/figures/qat_lr_probe.py FLOAT_DIR INIT_DIR STEPS,LR,SCALE_LR,TOP_K [...]
FLOAT_DIR: `gemma-edge convert bundled --out FLOAT_DIR`. INIT_DIR: the int4-block32 "MSE + act. weights"
checkpoint that `python docs/figures/quantization_table.py OUT` writes to OUT/int4-block32/mse/weighted.
Training text: 256-token sequences of `pydoc_training_text()`, one per step.
"""

import sys
import tempfile
import time

import torch

from gemma_edge.calibration.checkpoint import QuantizedCheckpoint
from gemma_edge.calibration.data import held_out_text, pydoc_training_text, token_sequences
from gemma_edge.calibration.evaluate import evaluate
from gemma_edge.calibration.qat import QATConfig, train
from gemma_edge.model import load

torch.set_num_threads(2)
loaded = load(sys.argv[1], max_seq_len=512, progress=False)
init = QuantizedCheckpoint.load(sys.argv[2])
held = loaded.tokenizer.encode(held_out_text())[:2100]
seqs = token_sequences([pydoc_training_text()], loaded.tokenizer, 256, 400)
print("float", evaluate(loaded.model, held, 512, progress=False).perplexity)
print("init", evaluate(init.build_model(512), held, 512, progress=False).perplexity, flush=True)
for spec in sys.argv[3:]:
    steps, lr, slr, k = spec.split(",")
    cfg = QATConfig(steps=int(steps), lr=float(lr), scale_lr=float(slr), top_k=int(k), save_every=10000)
    t = time.time()
    ckpt = train(loaded, init, seqs, cfg, tempfile.mkdtemp(), progress=False)
    r = evaluate(ckpt.build_model(512), held, 512, progress=False)
    print(spec, f"ppl {r.perplexity:.3f} loss {ckpt.provenance['first_loss']:.4f}->{ckpt.provenance['final_loss']:.4f} "
          f"{time.time() - t:.0f}s", flush=True)

"""Seconds per QAT step on the bundled Gemma 3 270M: teacher pass, student forward, backward, Adam.

Run: gemma-edge quantize bundled --recipe int4-block32 --out /tmp/q-init
     python docs/figures/qat_step_cost.py /tmp/q-init [STEPS]
Prints the teacher's pass once and each step's three parts (the first steps warm the allocator).
"""

import sys
import time

import torch

from gemma_edge.calibration.checkpoint import QuantizedCheckpoint
from gemma_edge.calibration.qat import QATConfig, QATStudent, _optimizer, teacher_target
from gemma_edge.model import load
from gemma_edge.model.bundled import bundled_gguf

torch.set_num_threads(2)
cfg = QATConfig(seq_len=256)
loaded = load(bundled_gguf(), max_seq_len=cfg.seq_len, progress=False)
student = QATStudent(loaded, QuantizedCheckpoint.load(sys.argv[1]), cfg)
opt = _optimizer(student, cfg)
tokens = torch.randint(0, 1000, (1, cfg.seq_len), generator=torch.Generator().manual_seed(0))
t = time.time()
target = teacher_target(loaded.model, tokens, cfg.top_k)
print(f"teacher {time.time() - t:.2f} s")
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 10):
    t0 = time.time()
    loss = student.loss(tokens, target)
    t1 = time.time()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t2 = time.time()
    opt.step()
    print(f"forward {t1 - t0:.2f} s, backward {t2 - t1:.2f} s, Adam {time.time() - t2:.2f} s")

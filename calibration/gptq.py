"""GPTQ: error-compensating rounding for integer grids (Frantar et al., 2022).

Quantizing a weight column by column, GPTQ pushes each column's rounding error onto the columns not yet
quantized, weighted by the inverse of the layer's input Hessian H = E[x xᵀ] (from calibration activations),
so the layer's *output* error ‖(W − Q) x‖ is minimised rather than the weight error. The scales are not
searched here: they come from the PTQ checkpoint's activation-weighted clip search and stay fixed, so a GPTQ
checkpoint stores exactly what a PTQ one does and every exporter takes it unchanged.

The Hessians are collected on the float model in one pass (each projection sees float inputs). A table
that is both the lookup and the LM head (`int4-block32-emb4`) keeps its PTQ rounding: GPTQ's error feedback
tunes the head's products and would only add noise to the embedding rows a lookup returns.
"""

from __future__ import annotations

from typing import Sequence

import torch

from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.gemma import Gemma

from .formats import IntGrid, QTensor
from .observers import observe_inputs

# Fraction of the mean diagonal added to H. The reference implementation's 0.01 fits the 270M's 2,048 data-free
# calibration tokens too closely (German KL 0.41 -> 0.69 against nearest rounding); 0.1 keeps most of the
# gain on English and code and loses less elsewhere (docs/quantization.md).
DAMP = 0.1
COLUMNS = 128  # columns updated together (the lazy batch of the reference implementation)


def collect_hessians(model: Gemma, sequences: Sequence[Sequence[int]], progress: bool = True) -> dict[str, torch.Tensor]:
    """E[x xᵀ] of the input of every projection (by weight name) and of the LM head, over all positions."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        sums[name] = sums.get(name, 0) + x.T @ x
        counts[name] = counts.get(name, 0) + x.shape[0]

    observe_inputs(model, sequences, add, desc="GPTQ Hessians", progress=progress)
    return {k: s / counts[k] for k, s in sums.items()}


@torch.no_grad()
def gptq(w: torch.Tensor, hessian: torch.Tensor, init: QTensor) -> QTensor:
    """Re-round `w` on `init`'s grid (its format, scales and zero points) with GPTQ's error feedback."""
    fmt = init.fmt
    if not isinstance(fmt, IntGrid):
        raise GemmaEdgeError(f"GPTQ rounds integer grids; {fmt.name} is not one")
    out, cols = w.shape
    block = fmt.block or cols
    qmin, qmax = fmt.qrange
    scale = init.scale.float()
    zero = torch.zeros_like(scale) if init.zero_point is None else init.zero_point.float()
    w = w.detach().float().clone()
    h = hessian.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(DAMP * h.diagonal().mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    codes = torch.empty(out, cols, dtype=torch.int16)
    for i1 in range(0, cols, COLUMNS):
        i2 = min(i1 + COLUMNS, cols)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros(out, i2 - i1), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = (i1 + i) // block
            s, z = scale[:, g], zero[:, g]
            code = torch.clamp(torch.round(w1[:, i] / s) + z, qmin, qmax)
            codes[:, i1 + i] = code.to(torch.int16)
            err = (w1[:, i] - (code - z) * s) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return QTensor(fmt, codes.to(init.qdata.dtype), init.scale, init.zero_point)

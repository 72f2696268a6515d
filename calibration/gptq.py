"""GPTQ: error-compensating rounding for integer grids (Frantar et al., 2022).

Quantizing a weight column by column, GPTQ pushes each column's rounding error onto the columns not yet
quantized, weighted by the inverse of the layer's input Hessian H = E[x xᵀ] (from calibration activations),
so the layer's *output* error ‖(W − Q) x‖ is minimised rather than the weight error. The scales are not
searched here: they come from the PTQ checkpoint's activation-weighted clip search and stay fixed, so a GPTQ
checkpoint stores exactly what a PTQ one does and every exporter takes it unchanged.

The Hessians are collected on the float model, layer by layer (each projection sees float inputs), and
kept on disk until their weight is rounded. A table that is both the lookup and the LM head
(`int4-block32-emb4`) is rounded as the head (`ptq._quantize_shared_table`): the error feedback adds some
noise to the rows the lookup returns, but the head's products weigh more (pooled KL 0.267 against 0.336 with
the table's PTQ rounding, docs/quantization.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.gemma import Gemma

from .formats import IntGrid, QTensor
from .recipe import LM_HEAD

# Fraction of the mean diagonal added to H. The reference implementation's 0.01 fits the 270M's 2,048 data-free
# calibration tokens too closely (German KL 0.41 -> 0.69 against nearest rounding); 0.1 keeps most of the
# gain on English and code and loses less elsewhere (docs/quantization.md).
DAMP = 0.1
COLUMNS = 128  # columns updated together (the lazy batch of the reference implementation)


class HessianStore(Mapping[str, torch.Tensor]):
    """E[x xᵀ] by weight name, one safetensors file per decoder layer in `folder`, read one tensor at a time:
    the 4B's Hessians take 19 GB (each down_proj's 10,240² floats), the 1B's 5.8, the 270M's 0.5."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Path] = {}

    def write(self, group: str, hessians: dict[str, torch.Tensor]) -> None:
        path = self.folder / f"{group}.safetensors"
        save_file({k: v.contiguous() for k, v in hessians.items()}, str(path))
        self.files.update(dict.fromkeys(hessians, path))

    def __getitem__(self, name: str) -> torch.Tensor:
        with safe_open(str(self.files[name]), "pt") as f:
            return f.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


BATCH = 8  # calibration sequences run through a layer side by side


@torch.no_grad()
def collect_hessians(model: Gemma, sequences: Sequence[Sequence[int]], folder: Path,
                     progress: bool = True) -> HessianStore:
    """E[x xᵀ] of the input of every projection (by weight name) and of the LM head, over all positions, into
    `folder`. Layer by layer: every sequence's hidden states (all of one length) pass layer i before layer
    i + 1 starts, so layer i's Hessians are complete when it ends and go to disk then; memory holds one
    layer's, plus the hidden states (4B, 16 x 256 tokens: 42 MB). Each projection sees the float model's
    inputs, as in one forward pass."""
    if not sequences:
        raise GemmaEdgeError("calibration set is empty: no sequences to observe")
    store = HessianStore(folder)
    sums: dict[str, torch.Tensor] = {}
    tokens = 0

    def add(name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        sums[name] = sums.get(name, 0) + x.T @ x

    def flush(group: str) -> None:
        store.write(group, {k: v / tokens for k, v in sums.items()})
        sums.clear()

    ids = torch.tensor([list(s) for s in sequences])
    tokens = ids.numel()
    positions = torch.arange(ids.shape[1])
    x = torch.cat([model.embed(ids[i:i + BATCH]) for i in range(0, len(ids), BATCH)])
    local, global_ = model.rope_tables(positions)
    hooks = [mod.register_forward_hook(lambda m, inp, out, n=f"{name}.weight": add(n, inp[0]))
             for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and name != "lm_head"]
    try:
        for i, layer in enumerate(tqdm(model.layers, desc="GPTQ Hessians", unit="layer", disable=not progress)):
            cos, sin = local if layer.is_sliding else global_
            for b in range(0, len(x), BATCH):
                layer.self_attn.cache.reset(len(x[b:b + BATCH]))
                x[b:b + BATCH] = layer(x[b:b + BATCH], positions, cos, sin)
            flush(f"layers.{i}")
        add(LM_HEAD, model.norm(x))
        flush("lm_head")
    finally:
        for h in hooks:
            h.remove()
        model.reset_caches()
    return store


@torch.no_grad()
def gptq(w: torch.Tensor, hessian: torch.Tensor, init: QTensor) -> QTensor:
    """Re-round `w` on `init`'s grid (its format, scales and zero points) with GPTQ's error feedback.

    The work runs on the transposed weight, so that each column GPTQ visits is one contiguous row: on the
    row-major weight every step read and wrote a column strided across all rows, one cache line per row —
    262,144 of them per column of an LM head (the 4B head took 24 minutes that way, docs/scale.md)."""
    fmt = init.fmt
    if not isinstance(fmt, IntGrid):
        raise GemmaEdgeError(f"GPTQ rounds integer grids; {fmt.name} is not one")
    out, cols = w.shape
    block = fmt.block or cols
    qmin, qmax = fmt.qrange
    scale = init.scale.float().t().contiguous()  # [groups, out]
    zero = torch.zeros_like(scale) if init.zero_point is None else init.zero_point.float().t().contiguous()
    wt = w.detach().float().t().contiguous()  # [cols, out]: column i of the weight is row i here
    h = hessian.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    wt[dead] = 0.0
    h.diagonal().add_(DAMP * h.diagonal().mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    codes = torch.empty(cols, out, dtype=torch.int16)
    for i1 in range(0, cols, COLUMNS):
        i2 = min(i1 + COLUMNS, cols)
        w1, err1, hinv1 = wt[i1:i2].clone(), torch.zeros(i2 - i1, out), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = (i1 + i) // block
            s, z = scale[g], zero[g]
            code = torch.clamp(torch.round(w1[i] / s) + z, qmin, qmax)
            codes[i1 + i] = code.to(torch.int16)
            err = (w1[i] - (code - z) * s) / hinv1[i, i]
            w1[i:] -= hinv1[i, i:, None] * err[None, :]
            err1[i] = err
        wt[i2:] -= hinv[i1:i2, i2:].t() @ err1
    return QTensor(fmt, codes.to(init.qdata.dtype).t().contiguous(), init.scale, init.zero_point)

"""Import checkpoints whose weights were trained onto an int4 block grid (Google's "-qat-q4_0-unquantized"
releases: bf16 weights that llama.cpp's Q4_0 stores without loss), recovering each block's scale exactly.

Q4_0 (llama.cpp `quantize_row_q4_0`): per block of 32 weights, d = m / -8 where m is the weight of largest
magnitude (sign kept), and q = round(w / d) in [-8, 7]. So the block's extreme weight sits at q = -8 and
d = m / -8 is exact in binary; d is negative when that weight is positive. Every other weight must then be
q * d for an integer q in [-8, 7], up to the precision the checkpoint stores (bf16: one unit in the last
place). A weight off that grid means the checkpoint was not trained for it, and the import is refused
rather than silently quantizing it.
"""

from __future__ import annotations

import torch

from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.loader import LoadedModel

from .checkpoint import QuantizedCheckpoint
from .formats import QTensor, QuantFormat, quantize_with
from .observers import CalibrationStats
from .ptq import quantize_model, quantize_weight
from .recipe import QuantRecipe


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """One unit in the last place of each value on the bf16 grid (8 significant bits)."""
    exponent = torch.frexp(x.float().abs().clamp(min=2.0 ** -126))[1]
    return torch.ldexp(torch.ones_like(x, dtype=torch.float32), exponent - 8)


def grid_qtensor(w: torch.Tensor, fmt: QuantFormat, name: str = "weight") -> QTensor:
    """The integers and exact Q4_0-style scales of a weight that lies on a symmetric int4 block grid;
    GemmaEdgeError naming the tensor and the worst block when it does not."""
    if fmt.kind != "int4" or not fmt.symmetric or fmt.block is None:
        raise GemmaEdgeError(f"{name}: grid import needs a symmetric int4 block format, not {fmt.name}")
    if w.shape[-1] % fmt.block:
        raise GemmaEdgeError(f"{name} has {w.shape[-1]} input features, not a multiple of block {fmt.block}")
    w = w.float()
    g = w.reshape(w.shape[0], -1, fmt.block)
    extreme = g.gather(-1, g.abs().argmax(-1, keepdim=True))[..., 0]
    scale = torch.where(extreme == 0, torch.ones_like(extreme), extreme / -8.0)
    q = torch.round(g / scale[..., None])
    off = (q * scale[..., None] - g).abs() > bf16_ulp(g)
    off |= (q < -8) | (q > 7)
    if off.any():
        row, block = (off.sum(-1) > 0).nonzero()[0].tolist()
        count = int(off.sum())
        raise GemmaEdgeError(
            f"{name}: {count} of {w.numel()} weights are not on an int4 block-{fmt.block} grid (first in row "
            f"{row}, block {block}); this is not a QAT 'q4_0-unquantized' checkpoint — quantize it with "
            "`gemma-edge quantize` (PTQ) or train it with `gemma-edge qat` instead")
    return quantize_with(w, fmt, scale)


def import_grid(loaded: LoadedModel, recipe: QuantRecipe, stats: CalibrationStats | None = None,
                progress: bool = True) -> QuantizedCheckpoint:
    """A QuantizedCheckpoint whose int4 block tensors come from the grid (exact scales, refused when off
    it); the recipe's other formats (an int8 embedding, say) are quantized as `quantize` would."""

    def quantizer(w: torch.Tensor, recipe: QuantRecipe, name: str, stats) -> QTensor:
        fmt = recipe.format_for(name)
        if fmt.kind == "int4" and fmt.symmetric and fmt.block is not None:
            return grid_qtensor(w, fmt, name)
        return quantize_weight(w, recipe, name, stats)

    ckpt = quantize_model(loaded, recipe, stats, progress=progress, quantizer=quantizer)
    ckpt.provenance = {"method": "grid-import", "grid": "Q4_0 (d = largest-magnitude weight / -8)"}
    for row in ckpt.report:
        if "clip" in row and recipe.format_for(row["name"]).kind == "int4":
            row["clip"] = "grid"
    return ckpt

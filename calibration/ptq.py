"""Post-training quantization: apply a recipe to a float model's weights, searching clip ranges."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from gemma_edge.model.loader import LoadedModel

from .checkpoint import QuantizedCheckpoint
from .formats import QTensor, check_finite, mse_clip_quantize, quantize
from .observers import CalibrationStats
from .recipe import EMBEDDING, LM_HEAD, QuantRecipe


def float_weights(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """The float parameters by name; a tied model's LM head appears under LM_HEAD as the embedding table."""
    weights = {k: v.detach().float() for k, v in loaded.model.named_parameters()}
    weights.setdefault(LM_HEAD, weights[EMBEDDING])
    return weights


def quantize_weight(w: torch.Tensor, recipe: QuantRecipe, name: str,
                    stats: CalibrationStats | None = None) -> QTensor:
    fmt = recipe.format_for(name)
    if recipe.clip == "minmax":
        return quantize(w, fmt, name=name)
    importance = stats.importance(name) if stats is not None and name != EMBEDDING else None
    return mse_clip_quantize(w, fmt, importance=importance, name=name)


Quantizer = Callable[[torch.Tensor, QuantRecipe, str, "CalibrationStats | None"], QTensor]


def quantize_model(loaded: LoadedModel, recipe: QuantRecipe, stats: CalibrationStats | None = None,
                   progress: bool = True, quantizer: Quantizer = quantize_weight) -> QuantizedCheckpoint:
    """Quantize every weight the recipe names; keep the rest (norms) float. Deterministic.
    `quantizer` turns one weight into a QTensor (the grid import recovers scales instead of searching)."""
    weights = float_weights(loaded)
    names = sorted(weights)
    recipe.check_overrides(names)
    for name, w in weights.items():
        check_finite(w, name)
    tied = loaded.config.tie_word_embeddings
    emb_fmt, head_fmt = recipe.format_for(EMBEDDING), recipe.format_for(LM_HEAD)
    share_head = tied and emb_fmt == head_fmt  # one table serves lookup and output
    quantized: dict[str, QTensor] = {}
    floats: dict[str, torch.Tensor] = {}
    report = []
    for name in tqdm(names, desc=f"quantize ({recipe.name})", unit="tensor", disable=not progress):
        if name == LM_HEAD and share_head:
            continue
        w, fmt = weights[name], recipe.format_for(name)
        if fmt is None:
            floats[name] = w
            report.append({"name": name, "format": "float32", "shape": list(w.shape), "bytes": w.numel() * 4})
            continue
        q = quantizer(w, recipe, name, stats)
        quantized[name] = q
        err = (q.dequantize() - w).norm() / w.norm().clamp(min=1e-12)
        report.append({"name": name, "format": fmt.name, "shape": list(w.shape), "bytes": q.storage_bytes(),
                       "clip": recipe.clip, "relative_error": round(err.item(), 6)})
    return QuantizedCheckpoint(loaded.config, recipe, quantized, floats,
                               loaded.tokenizer.serialized if loaded.tokenizer else None, report,
                               str(Path(loaded.source).resolve()) if loaded.source else None)

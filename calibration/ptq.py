"""Post-training quantization: apply a recipe to a float model's weights, searching clip ranges."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from gemma_edge.model.loader import LoadedModel

from .checkpoint import QuantizedCheckpoint
from .formats import IntGrid, QTensor, check_finite, mse_clip_quantize, quantize
from .gptq import gptq
from .observers import CalibrationStats
from .recipe import EMBEDDING, LM_HEAD, QuantRecipe


def float_weights(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """The float parameters by name; a tied model's LM head appears under LM_HEAD as the embedding table."""
    weights = {k: v.detach().float() for k, v in loaded.model.named_parameters()}
    weights.setdefault(LM_HEAD, weights[EMBEDDING])
    return weights


def quantize_weight(w: torch.Tensor, recipe: QuantRecipe, name: str,
                    stats: CalibrationStats | None = None) -> QTensor:
    """Scales from the clip search (activation-weighted when `stats` has the weight's inputs), then nearest
    rounding, or GPTQ's on those scales when the recipe asks and `stats` holds the input's Hessian."""
    fmt = recipe.format_for(name)
    if recipe.clip == "minmax":
        q = quantize(w, fmt, name=name)
    else:
        importance = stats.importance(name) if stats is not None and name != EMBEDDING else None
        q = mse_clip_quantize(w, fmt, importance=importance, name=name)
    hessian = stats.hessians.get(name) if stats is not None and stats.hessians and name != EMBEDDING else None
    if recipe.rounding == "gptq" and hessian is not None and isinstance(fmt, IntGrid):
        q = gptq(w, hessian, q)
    return q


Quantizer = Callable[[torch.Tensor, QuantRecipe, str, "CalibrationStats | None"], QTensor]


def quantize_model(loaded: LoadedModel, recipe: QuantRecipe, stats: CalibrationStats | None = None,
                   progress: bool = True, quantizer: Quantizer = quantize_weight) -> QuantizedCheckpoint:
    """Quantize every weight the recipe names; keep the rest (norms) float. Deterministic.
    `quantizer` turns one weight into a QTensor (the grid import recovers scales instead of searching).
    A multimodal source (Gemma 3 4B+) has its vision tower quantized by the same recipe (plain PTQ, whatever
    `quantizer` does for the decoder) and carried along."""
    weights = float_weights(loaded)
    vision = _vision_weights(loaded.source)
    names = sorted(weights) + sorted(vision or {})
    recipe.check_overrides(names)
    for name, w in {**weights, **(vision or {})}.items():
        check_finite(w, name)
    tied = loaded.config.tie_word_embeddings
    emb_fmt, head_fmt = recipe.format_for(EMBEDDING), recipe.format_for(LM_HEAD)
    if tied and emb_fmt == head_fmt:  # one table serves lookup and output
        del weights[LM_HEAD]
    quantized, floats, report = _quantize_all(weights, recipe, stats, quantizer, progress)
    multimodal = None
    if vision is not None:
        q, f, r = _quantize_all(vision, recipe, None, quantize_weight, progress, desc="vision tower", fallback=True)
        quantized.update(q)
        floats.update(f)
        report += r
        multimodal = json.loads((Path(loaded.source) / "config.json").read_text())
    return QuantizedCheckpoint(loaded.config, recipe, quantized, floats,
                               loaded.tokenizer.serialized if loaded.tokenizer else None, report,
                               str(Path(loaded.source).resolve()) if loaded.source else None,
                               multimodal_config=multimodal)


def _quantize_all(weights: dict[str, torch.Tensor], recipe: QuantRecipe, stats: CalibrationStats | None,
                  quantizer: Quantizer, progress: bool, desc: str = "quantize", fallback: bool = False):
    """(quantized, floats, report rows) of `weights` under `recipe`. With `fallback`, a block format whose
    block does not divide a weight's input width (SigLIP's 4304-wide MLP) takes that kind per channel."""
    quantized: dict[str, QTensor] = {}
    floats: dict[str, torch.Tensor] = {}
    report = []
    for name in tqdm(sorted(weights), desc=f"{desc} ({recipe.name})", unit="tensor", disable=not progress):
        w, fmt = weights[name], recipe.format_for(name)
        if fmt is None or w.ndim != 2:
            floats[name] = w
            report.append({"name": name, "format": "float32", "shape": list(w.shape), "bytes": w.numel() * 4})
            continue
        if fallback and fmt.block and w.shape[1] % fmt.block:
            fmt = dataclasses.replace(fmt, block=None)
            q = quantize(w, fmt, name=name) if recipe.clip == "minmax" else mse_clip_quantize(w, fmt, name=name)
        else:
            q = quantizer(w, recipe, name, stats)
        quantized[name] = q
        err = (q.dequantize() - w).norm() / w.norm().clamp(min=1e-12)
        row = {"name": name, "format": fmt.name, "shape": list(w.shape), "bytes": q.storage_bytes(),
               "clip": recipe.clip, "relative_error": round(err.item(), 6)}
        if recipe.rounding != "nearest" and stats is not None and name in (stats.hessians or {}):
            row["rounding"] = recipe.rounding
        report.append(row)
    return quantized, floats, report


def _vision_weights(source) -> dict[str, torch.Tensor] | None:
    """The vision tower and projector of a multimodal HF folder, under their checkpoint names."""
    from gemma_edge.model.loader import has_vision, load_vision

    if source is None or not has_vision(source):
        return None
    return {k: v.detach().float() for k, v in load_vision(source).state_dict().items()}

"""Post-training quantization: apply a recipe to a float model's weights, searching clip ranges."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.hf_checkpoint import iter_state_dict
from gemma_edge.model.loader import LoadedModel
from gemma_edge.model.vision import VisionConfig, vision_shapes

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
        importance = stats.importance(name) if stats is not None else None
        q = mse_clip_quantize(w, fmt, importance=importance, name=name)
    hessian = stats.hessians.get(name) if stats is not None and stats.hessians else None
    if recipe.rounding == "gptq" and hessian is not None and isinstance(fmt, IntGrid):
        q = gptq(w, hessian, q)
    return q


Quantizer = Callable[[torch.Tensor, QuantRecipe, str, "CalibrationStats | None"], QTensor]
Weights = Iterable[tuple[str, torch.Tensor]]
CHUNK_ELEMENTS = 1 << 24  # a weight is quantized this many elements (64 MB of float32) of whole rows at a time


def quantize_model(loaded: LoadedModel, recipe: QuantRecipe, stats: CalibrationStats | None = None,
                   progress: bool = True, quantizer: Quantizer = quantize_weight,
                   weights: Weights | None = None) -> QuantizedCheckpoint:
    """Quantize every weight the recipe names; keep the rest (norms) float. Deterministic.
    `quantizer` turns one weight into a QTensor (the grid import recovers scales instead of searching).
    `weights`: the float decoder tensors as (name, tensor) pairs, each once — by default the model's; the
    pipeline streams them from the checkpoint (`model.loader.iter_weights`), so memory holds the integers
    and one float weight, not the model. A multimodal source (Gemma 3 4B+) has its vision tower quantized
    by the same recipe (plain PTQ, whatever `quantizer` does for the decoder) and carried along."""
    config = loaded.config
    shapes = {n: tuple(t.shape) for n, t in loaded.model.state_dict().items()}
    shapes.setdefault(LM_HEAD, shapes[EMBEDDING])
    names = sorted(shapes)
    vision = _vision_names(loaded.source)
    recipe.check_overrides(names + (vision or []))
    for name in names:  # a block that does not divide a width fails now, not after hours of work
        fmt = recipe.format_for(name)
        if fmt is not None and len(shapes[name]) == 2:
            fmt.group_size(shapes[name], name)
    tied = config.tie_word_embeddings
    separate_head = not tied or recipe.format_for(EMBEDDING) != recipe.format_for(LM_HEAD)
    if weights is None:
        weights = float_weights(loaded).items()
    quantized: dict[str, QTensor] = {}
    floats: dict[str, torch.Tensor] = {}
    report: list[dict] = []
    bar = tqdm(total=len(names) - (not separate_head), desc=f"quantize ({recipe.name})", unit="tensor",
               disable=not progress)
    for name, w in weights:
        if tied and name == LM_HEAD:  # the table's second name (float_weights), or a stray copy in a file
            continue
        if shapes.get(name) != tuple(w.shape):
            raise GemmaEdgeError(f"{loaded.source}: tensor {name} {list(w.shape)} is not in a model of this "
                                 f"config.json{'' if name not in shapes else f' (which has {list(shapes[name])})'}; "
                                 "use the config.json that came with these weights")
        if tied and name == EMBEDDING and not separate_head:
            _quantize_shared_table(w, recipe, stats, quantizer, quantized, floats, report)
            bar.update()
        else:
            for target in [EMBEDDING, LM_HEAD] if tied and name == EMBEDDING else [name]:
                _quantize_into(target, w, recipe, stats, quantizer, quantized, floats, report)
                bar.update()
        del w
    bar.close()
    _check_complete([n for n in names if n != LM_HEAD or separate_head], quantized, floats, loaded.source)
    report.sort(key=lambda row: row["name"])
    multimodal = None
    if vision is not None:  # streamed from the shards too, after the decoder
        rows: list[dict] = []
        for name, w in tqdm(iter_state_dict(Path(loaded.source), vision=True), total=len(vision),
                            desc=f"vision tower ({recipe.name})", unit="tensor", disable=not progress):
            _quantize_into(name, w, recipe, None, quantize_weight, quantized, floats, rows, fallback=True)
        _check_complete(vision, quantized, floats, loaded.source)
        report += sorted(rows, key=lambda row: row["name"])
        multimodal = json.loads((Path(loaded.source) / "config.json").read_text())
    return QuantizedCheckpoint(config, recipe, quantized, floats,
                               loaded.tokenizer.serialized if loaded.tokenizer else None, report,
                               str(Path(loaded.source).resolve()) if loaded.source else None,
                               multimodal_config=multimodal)


def _check_complete(expected: list[str], quantized: dict, floats: dict, source) -> None:
    """A streamed checkpoint is never loaded into a model, which would have named a missing tensor."""
    missing = [n for n in expected if n not in quantized and n not in floats]
    if missing:
        raise GemmaEdgeError(f"{source}: {len(missing)} tensors missing, e.g. {missing[0]}; the checkpoint "
                             "is incomplete")


def _quantize_shared_table(w: torch.Tensor, recipe: QuantRecipe, stats: CalibrationStats | None,
                           quantizer: Quantizer, quantized: dict[str, QTensor], floats: dict[str, torch.Tensor],
                           report: list[dict]) -> None:
    """One table for the lookup and the LM head (`-emb4`) is rounded as the head, with the head's input
    statistics (clip weights, GPTQ's Hessian), and filed under the table's name. Of the two uses the head's
    products decide more: on the held-out domains this rounding has pooled KL 0.267 against 0.336 for the
    table rounded on its own (docs/quantization.md)."""
    _quantize_into(LM_HEAD, w, recipe, stats, quantizer, quantized, floats, report)
    for store in (quantized, floats):  # (a recipe may keep the table float)
        if LM_HEAD in store:
            store[EMBEDDING] = store.pop(LM_HEAD)
    report[-1]["name"] = EMBEDDING


def _quantize_into(name: str, w: torch.Tensor, recipe: QuantRecipe, stats: CalibrationStats | None,
                   quantizer: Quantizer, quantized: dict[str, QTensor], floats: dict[str, torch.Tensor],
                   report: list[dict], fallback: bool = False) -> None:
    """Quantize one weight under `recipe` into `quantized` (or keep it float in `floats`), its report row
    appended. With `fallback`, a block format whose block does not divide the weight's input width
    (SigLIP's 4304-wide MLP) takes that kind per channel."""
    check_finite(w, name)
    fmt = recipe.format_for(name)
    if fmt is None or w.ndim != 2:
        floats[name] = w.float()
        report.append({"name": name, "format": "float32", "shape": list(w.shape), "bytes": w.numel() * 4})
        return
    if fallback and fmt.block and w.shape[1] % fmt.block:
        fmt = dataclasses.replace(fmt, block=None)
        one = lambda rows: quantize(rows, fmt, name=name) if recipe.clip == "minmax" else mse_clip_quantize(rows, fmt, name=name)  # noqa: E731
    else:
        one = lambda rows: quantizer(rows, recipe, name, stats)  # noqa: E731
    q, err = by_rows(w.float(), one)
    quantized[name] = q
    row = {"name": name, "format": fmt.name, "shape": list(w.shape), "bytes": q.storage_bytes(),
           "clip": recipe.clip, "relative_error": round(err, 6)}
    if recipe.rounding != "nearest" and stats is not None and name in (stats.hessians or {}):
        row["rounding"] = recipe.rounding
    report.append(row)


def by_rows(w: torch.Tensor, quantize_rows: Callable[[torch.Tensor], QTensor],
            chunk_elements: int = CHUNK_ELEMENTS) -> tuple[QTensor, float]:
    """`quantize_rows(w)` a run of whole rows at a time, and the relative error |dequant - w| / |w|. Every
    format's scales belong to one output row (blocks never span rows; GPTQ's error feedback runs along a
    row), so the pieces are the whole's; the search's and rounding's transients then stay near the chunk's
    size instead of several times the weight's (the 1B's embedding table: +5.5 GB, measured)."""
    step = max(1, chunk_elements // max(1, w.shape[1]))
    parts, err2, norm2 = [], 0.0, 0.0
    for i in range(0, w.shape[0], step):
        rows = w[i:i + step]
        try:
            q = quantize_rows(rows)
        except GemmaEdgeError as e:  # its row numbers count from the chunk's first
            raise GemmaEdgeError(f"{e} (rows counted from row {i} of the weight)" if i else str(e)) from None
        err2 += float((q.dequantize() - rows).pow(2).sum())
        norm2 += float(rows.pow(2).sum())
        parts.append(q)
    if len(parts) == 1:
        q = parts[0]
    else:
        cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
        q = QTensor(parts[0].fmt, torch.cat([p.qdata for p in parts]), cat([p.scale for p in parts]),
                    cat([p.zero_point for p in parts]))
    return q, (err2 ** 0.5) / max(norm2 ** 0.5, 1e-12)


def _vision_names(source) -> list[str] | None:
    """The vision tower's and projector's tensor names of a multimodal HF folder (None for text-only)."""
    from gemma_edge.model.loader import has_vision

    if source is None or not has_vision(source):
        return None
    multimodal = json.loads((Path(source) / "config.json").read_text())
    if VisionConfig.from_hf_dict(multimodal) is None:  # a quantized checkpoint's tower: no float weights
        raise GemmaEdgeError(f"{source}: its vision tower is not held as an HF checkpoint's; quantize the float "
                             "multimodal checkpoint")
    return sorted(vision_shapes(multimodal))

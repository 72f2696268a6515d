"""The backends, one record each: the artifact's files, its exporter, its runners, its own generation loop and
the formats it lowers. `open_runner`, parity, bench, the pipeline and the CLI read this table; adding a
runtime is adding a record (and its modules), not editing those."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gemma_edge.model.errors import GemmaEdgeError


@dataclass(frozen=True)
class Backend:
    """`name`: `gemma-edge export NAME`. `artifact`: the main file; `suffixes`: the files holding the model.
    `probe_first`: a damaged file can abort the runtime, so a child process loads it before this one does.
    `export(source, out, max_seq_len=, overwrite=, text_only=)`; `runner(folder, threads, multimodal)`;
    `stock_loop(folder, tokenizer, vision_meta, max_new_tokens)` -> (prompt ids, pixels) -> the runtime's own
    greedy continuation (text or ids); `lowerings()` -> {use: table} of the formats it takes;
    `export_options`: the switches its exporter takes beyond the common ones (`gemma-edge export --NAME`)."""

    name: str
    artifact: str
    runtime: str
    suffixes: tuple[str, ...]
    probe_first: bool
    export: Callable[..., Path]
    runner: Callable[[Path, int | None, bool], object]
    stock_loop: Callable[[Path, object, dict | None, int], Callable]
    lowerings: Callable[[], dict]
    export_options: tuple[str, ...] = ()


# ---- ExecuTorch ---------------------------------------------------------------------------------

def _export_pte(source, out, **options) -> Path:
    from gemma_edge.export.executorch import export_pte

    return export_pte(source, out, **options)


def _pte_runner(folder: Path, threads: int | None, multimodal: bool):
    from .executorch_runner import ExecuTorchMultimodalRunner, ExecuTorchRunner

    return ExecuTorchMultimodalRunner(folder) if multimodal else ExecuTorchRunner(folder / "model.pte")


def _pte_stock_loop(folder: Path, tokenizer, meta: dict | None, max_new_tokens: int) -> Callable:
    """ExecuTorch's TextLLMRunner / MultimodalRunner (what Android's LlmModule wraps): printed text."""
    from .executorch_runner import StockTextRunner, join_byte_pieces, stock_multimodal_generate

    if meta is None:
        stock = StockTextRunner(folder)
        return lambda ids, pixels: join_byte_pieces(stock.generate(tokenizer.decode(ids[1:]), max_new_tokens)[0])
    from gemma_edge.model.image_processing import prompt_segments

    return lambda ids, pixels: stock_multimodal_generate(
        folder, prompt_segments(ids, meta["image_token_id"], meta["tokens_per_image"]), pixels, max_new_tokens)


def _pte_lowerings() -> dict:
    from gemma_edge.export import xnnpack_quant

    return {"linear": xnnpack_quant.LINEAR, "embedding": xnnpack_quant.EMBEDDING_GATHER}


# ---- ONNX ---------------------------------------------------------------------------------------

def _export_onnx(source, out, **options) -> Path:
    from gemma_edge.export.onnx import export_onnx

    return export_onnx(source, out, **options)


def _onnx_runner(folder: Path, threads: int | None, multimodal: bool):
    from .onnx_runner import OnnxMultimodalRunner, OnnxRunner

    return OnnxMultimodalRunner(folder, threads=threads) if multimodal else OnnxRunner(folder, threads=threads)


def _onnx_stock_loop(folder: Path, tokenizer, meta: dict | None, max_new_tokens: int) -> Callable:
    """onnxruntime-genai's generator (what a genai app runs): token ids."""
    from .genai_runner import GenAIRunner

    genai = GenAIRunner(folder)
    soft = (lambda ids: sum(t == meta["image_token_id"] for t in ids)) if meta else (lambda ids: 0)
    return lambda ids, pixels: genai.generate(ids, max_new_tokens, pixels, soft(ids))


def _onnx_lowerings() -> dict:
    from gemma_edge.export import onnx_quant

    return {"linear": onnx_quant.LINEAR, "embedding": onnx_quant.GATHER, "tied head": onnx_quant.TIED_HEAD}


BACKENDS: dict[str, Backend] = {b.name: b for b in [
    Backend("pte", "model.pte", "executorch", (".pte", ".ptd"), True, _export_pte, _pte_runner, _pte_stock_loop,
            _pte_lowerings, export_options=("prefill_chunk",)),
    Backend("onnx", "model.onnx", "onnxruntime", (".onnx", ".data"), False, _export_onnx, _onnx_runner,
            _onnx_stock_loop, _onnx_lowerings, export_options=("int8_activations", "windowed_kv")),
]}


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise GemmaEdgeError(f"artifact kind must be one of {', '.join(BACKENDS)}, not {name!r}")
    return BACKENDS[name]


def backend_of(folder: str | Path) -> Backend:
    """The backend whose artifact `folder` holds; a one-line error naming what an export folder has."""
    folder = Path(folder)
    for b in BACKENDS.values():
        if (folder / b.artifact).is_file():
            return b
    names = " nor ".join(b.artifact for b in BACKENDS.values())
    raise GemmaEdgeError(f"{folder}: neither {names} (nor a .gguf file); pass a folder written by gemma-edge export")

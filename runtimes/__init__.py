"""gemma_edge.runtimes: runners for exported artifacts behind one `Runner` protocol (`executorch_runner.py`,
`onnx_runner.py`, `genai_runner.py`, `llamacpp_runner.py` for a GGUF), `open_runner` to pick one, the fidelity helpers
(`parity.py`) and `bench.py`."""

from __future__ import annotations

from pathlib import Path

from gemma_edge.model.errors import GemmaEdgeError


def artifact_files(folder: str | Path) -> list[Path]:
    """The files that hold an exported model (ONNX keeps its weights beside the graph; a GGUF is one file)."""
    folder = Path(folder)
    if folder.suffix == ".gguf" and folder.is_file():
        return [folder]
    if (folder / "model.pte").is_file():
        return [folder / "model.pte"]
    if (folder / "model.onnx").is_file():
        return [p for p in (folder / "model.onnx", folder / "model.onnx.data") if p.is_file()]
    raise GemmaEdgeError(f"{folder}: neither model.pte nor model.onnx (nor a .gguf file); pass a folder written by "
                         "gemma-edge export")


def artifact_vision(folder: str | Path) -> dict | None:
    """manifest.json's `metadata.vision` of an exported folder: what a multimodal artifact needs to preprocess
    images and build the prompt (None for a text-only artifact)."""
    import json

    manifest = Path(folder) / "manifest.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text()).get("metadata", {}).get("vision")


def open_runner(folder: str | Path, threads: int | None = None):
    """A prefill/decode runner for an exported folder: ExecuTorch for model.pte, ONNX Runtime for model.onnx,
    llama.cpp for a .gguf file (when llama-cpp-python is installed). A multimodal export (its manifest
    describes the vision input) gets the multimodal runner, whose `images` attribute takes pixels."""
    files = artifact_files(folder)
    if files[0].suffix == ".gguf":
        from .llamacpp_runner import LlamaCppRunner

        return LlamaCppRunner(files[0], threads=threads)
    multimodal = artifact_vision(folder) is not None
    if files[0].suffix == ".pte":
        from .executorch_runner import ExecuTorchMultimodalRunner, ExecuTorchRunner

        return ExecuTorchMultimodalRunner(folder) if multimodal else ExecuTorchRunner(files[0])
    from .onnx_runner import OnnxMultimodalRunner, OnnxRunner

    return OnnxMultimodalRunner(folder, threads=threads) if multimodal else OnnxRunner(folder, threads=threads)

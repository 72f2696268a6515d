"""gemma_edge.runtimes: runners for exported artifacts behind one `Runner` protocol (`executorch_runner.py`,
`onnx_runner.py`, `genai_runner.py`, `llamacpp_runner.py` for a GGUF), the backend table (`backends.py`),
`open_runner` to pick one, parity (`parity/`, the last stage) and `bench.py`."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from gemma_edge.model.errors import GemmaEdgeError

from .backends import backend_of


def artifact_files(folder: str | Path) -> list[Path]:
    """The files that hold an exported model, the main one first (a GGUF is one file)."""
    folder = Path(folder)
    if folder.suffix == ".gguf" and folder.is_file():
        return [folder]
    from gemma_edge.export.manifest import read_manifest

    suffixes = backend_of(folder).suffixes
    manifest = read_manifest(folder)
    names = [manifest["artifact"]] + sorted(n for n in manifest.get("files", {})
                                           if n.endswith(suffixes) and n != manifest["artifact"])
    return [folder / n for n in names if (folder / n).is_file()]


def artifact_vision(folder: str | Path) -> dict | None:
    """manifest.json's `metadata.vision` of an exported folder: what a multimodal artifact needs to preprocess
    images and build the prompt (None for a text-only artifact)."""
    from gemma_edge.export.manifest import read_manifest

    if not (Path(folder) / "manifest.json").exists():
        return None
    return read_manifest(folder).get("metadata", {}).get("vision")


def open_runner(folder: str | Path, threads: int | None = None, verify: bool = True):
    """A prefill/decode runner for an exported folder: ExecuTorch for model.pte, ONNX Runtime for model.onnx,
    llama.cpp for a .gguf file (when llama-cpp-python is installed). A multimodal export (its manifest
    describes the vision input) gets the multimodal runner, whose `images` attribute takes pixels. With
    `verify`, every file is first checked against the sha256 in manifest.json."""
    files = artifact_files(folder)
    if files[0].suffix == ".gguf":
        from .llamacpp_runner import LlamaCppRunner

        return LlamaCppRunner(files[0], threads=threads)
    if verify:
        from gemma_edge.export.manifest import verify_artifact

        verify_artifact(folder)
    return backend_of(folder).runner(Path(folder), threads, artifact_vision(folder) is not None)


def probe(folder: str | Path, timeout: float = 600) -> None:
    """Load the artifact and run one token in a separate process: a damaged program can abort its runtime
    (ExecuTorch terminates on some malformed files), which must fail a check, not end the caller."""
    proc = subprocess.run([sys.executable, "-m", "gemma_edge.runtimes.probe", str(folder)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise GemmaEdgeError(f"{folder}: the runtime cannot load or run this artifact: {exit_reason(proc)}")


def exit_reason(proc: subprocess.CompletedProcess) -> str:
    """Why a child running a runtime failed, in one line: the signal that killed it, by name (the last line it
    logged is then incidental), else its last line of output."""
    if proc.returncode < 0:  # e.g. SIGILL from a runtime built for another processor
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = "no name"
        return f"the runtime died with signal {-proc.returncode} ({name})"
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"

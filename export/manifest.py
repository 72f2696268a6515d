"""manifest.json beside every artifact: where it came from, what it is, and what it needs to run.

No timestamps: two exports of the same input are byte-identical, manifest included."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_digest(source: Path) -> str:
    """sha256 of a file, or of a folder's (name, sha256) list."""
    if source.is_file():
        return sha256_file(source)
    h = hashlib.sha256()
    for p in sorted(x for x in source.iterdir() if x.is_file()):
        h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def write_manifest(folder: Path, source: Path, artifact: str, runtime: str, metadata: dict[str, Any],
                   activations: str = "none") -> dict:
    """`activations`: how the artifact really computes ("int8_dynamic" when the runtime quantizes
    activations whatever the recipe says); the parity harness builds the matching reference from it."""
    recipe_file = source / "recipe.json" if source.is_dir() else None
    manifest = {
        "artifact": artifact,
        "runtime": runtime,
        "sha256": sha256_file(folder / artifact),
        "size_bytes": (folder / artifact).stat().st_size,
        "source": {"name": source.name, "path": str(source.resolve()), "sha256": source_digest(source)},
        "recipe": json.loads(recipe_file.read_text()) if recipe_file and recipe_file.exists() else None,
        "metadata": metadata,
        "activations": activations,
        "versions": {d: _version(d) for d in ("gemma-edge", "torch", "executorch", "onnx", "onnxruntime")
                     if _version(d)},
        "parity": None,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def vision_metadata(config, settings) -> dict[str, Any]:
    """What a runner needs to preprocess images and build the prompt (`vision.VisionConfig`,
    `image_processing.ImageSettings`)."""
    return {"image_size": config.image_size, "image_mean": list(settings.mean), "image_std": list(settings.std),
            "tokens_per_image": config.mm_tokens_per_image, "image_token_id": config.image_token_id,
            "boi_token_id": config.boi_token_id, "eoi_token_id": config.eoi_token_id}

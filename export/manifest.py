"""manifest.json beside every artifact: where it came from, what it is, every file's sha256, and what it
needs to run. `read_manifest` is its one reader and `verify_artifact` checks the files against it.

No timestamps: two exports of the same input are byte-identical, manifest included."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable

from gemma_edge.model.digest import content_digest, sha256_file
from gemma_edge.model.errors import GemmaEdgeError

MANIFEST = "manifest.json"


def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def write_manifest(folder: Path, source: Path, artifact: str, runtime: str, metadata: dict[str, Any],
                   activations: str = "none") -> dict:
    """Written last, over the finished folder: `files` lists every other file with its sha256 and size.
    `activations`: how the artifact really computes ("int8_dynamic" when the runtime quantizes activations
    per token whatever the recipe says, "int8_block" for ONNX's speed path, metadata "activation_blocks"
    naming each weight's block); the parity harness builds the matching reference from it."""
    from gemma_edge.calibration.checkpoint import is_quantized_checkpoint

    recipe_file = source / "recipe.json" if is_quantized_checkpoint(source) else None
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {
        "artifact": artifact,
        "runtime": runtime,
        "sha256": files[artifact]["sha256"],
        "size_bytes": files[artifact]["bytes"],
        "files": files,
        "source": {"name": source.name, "path": str(source.resolve()), "sha256": content_digest(source)},
        "recipe": json.loads(recipe_file.read_text()) if recipe_file and recipe_file.exists() else None,
        "metadata": metadata,
        "activations": activations,
        "versions": {d: _version(d) for d in ("gemma-edge", "torch", "executorch", "onnx", "onnxruntime")
                     if _version(d)},
        "parity": None,
    }
    _write(folder, manifest)
    return manifest


def _self_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _write(folder: Path, manifest: dict) -> None:
    """The manifest carries the sha256 of its own content, so an edit to it is caught like one to a file."""
    manifest["manifest_sha256"] = _self_digest(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(folder: str | Path, complete: bool = True) -> dict:
    """The manifest of an exported folder, or a one-line error naming what is wrong with it. With `complete`
    it must describe an artifact (its file, source and metadata); without, any JSON object will do."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise GemmaEdgeError(f"{path}: missing; pass a folder written by gemma-edge export") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise GemmaEdgeError(f"{path}: not readable JSON ({e}); export the artifact again") from None
    if not isinstance(manifest, dict) or complete and (
            not isinstance(manifest.get("artifact"), str) or not isinstance(manifest.get("source"), dict)
            or not isinstance(manifest.get("metadata", {}), dict)):
        raise GemmaEdgeError(f"{path}: not a gemma-edge manifest (no artifact, source and metadata); "
                             "export the artifact again")
    return manifest


def verify_artifact(folder: str | Path) -> dict:
    """Check every file the manifest lists against its sha256; returns the manifest. A missing or changed
    file is a one-line error naming it (pass --no-verify to use a folder edited on purpose)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if "manifest_sha256" in manifest and manifest["manifest_sha256"] != _self_digest(manifest):
        raise GemmaEdgeError(f"{folder / MANIFEST}: its content differs from its own sha256 (edited or damaged); "
                             "export again, or pass --no-verify if you changed it on purpose")
    files = manifest.get("files") or {manifest["artifact"]: {"sha256": manifest.get("sha256")}}  # older exports
    if not isinstance(files, dict):
        raise GemmaEdgeError(f"{folder / MANIFEST}: its file list is damaged; export the artifact again")
    for name, record in sorted(files.items()):
        path = folder / name
        expected = record.get("sha256") if isinstance(record, dict) else None
        if not path.is_file():
            raise GemmaEdgeError(f"{path}: missing (listed in {MANIFEST}); export the artifact again")
        if sha256_file(path) != expected:
            raise GemmaEdgeError(f"{path}: differs from the sha256 in {MANIFEST} (modified or damaged); export "
                                 "again, or pass --no-verify if you changed it on purpose")
    return manifest


def record_source(folder: Path, source: Path) -> None:
    """Point the manifest at `source` (the same content, found elsewhere: a build restored from the cache)."""
    manifest = read_manifest(folder)
    manifest["source"].update(name=source.name, path=str(source.resolve()))
    _write(folder, manifest)


def vision_metadata(config, settings) -> dict[str, Any]:
    """What a runner needs to preprocess images and build the prompt (`vision.VisionConfig`,
    `image_processing.ImageSettings`)."""
    return {"image_size": config.image_size, "image_mean": list(settings.mean), "image_std": list(settings.std),
            "tokens_per_image": config.mm_tokens_per_image, "image_token_id": config.image_token_id,
            "boi_token_id": config.boi_token_id, "eoi_token_id": config.eoi_token_id}


def write_artifact(out: str | Path, source: Path, overwrite: bool, *, artifact: str, runtime: str,
                   tokenizer_model: bytes, metadata: dict[str, Any], write: Callable[[Path], None],
                   activations: str = "none") -> Path:
    """Every exporter's last step, written once: the backend's files (`write(folder)`), tokenizer.model and
    the manifest, into a folder that appears at `out` whole or not at all."""
    from gemma_edge.model.atomic import atomic_dir

    with atomic_dir(out, overwrite=overwrite, inputs=[source]) as tmp:
        write(tmp)
        (tmp / "tokenizer.model").write_bytes(tokenizer_model)
        write_manifest(tmp, source, artifact=artifact, runtime=runtime, metadata=metadata, activations=activations)
    return Path(out)

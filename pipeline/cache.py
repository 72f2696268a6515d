"""A content-addressed build cache: the same inputs give the stored output back, verified.

A stage's key is the sha256 of a JSON document naming everything that can change its output: the
stage, its options, the content digests of its inputs, gemma-edge's own source files, the versions of
the libraries that compute it and the platform. An entry is `builds/<key>/` with `output/` and
`entry.json` (every file's sha256); it appears by one rename, so a reader never sees half of one. A hit
re-hashes every file before use; a mismatch or a missing file deletes the entry and the stage runs again.
Builders of one key hold a lock, so a second one waits and then hits. Location: `$GEMMA_EDGE_CACHE`
(default `~/.cache/gemma_edge`), `builds/` inside it; least recently used entries go when the total passes
`$GEMMA_EDGE_CACHE_MAX_GB` (default 20). A restored output shares its large files with the entry (hard links,
`restore`), so a build and its cached copy take the disk once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

from gemma_edge.model.atomic import clean_leftovers
from gemma_edge.model.bundled import cache_dir
from gemma_edge.model.digest import sha256_file, tree_files
from gemma_edge.model.errors import GemmaEdgeError

# Libraries whose version can change what a stage writes or what a runtime computes.
LIBRARIES = ("torch", "executorch", "onnx", "onnx-ir", "onnxruntime", "onnxruntime-genai", "numpy", "safetensors",
             "sentencepiece", "gguf", "ml_dtypes", "transformers")
PACKAGES = ("model", "calibration", "export", "runtimes", "pipeline", "cli")


def _package_dir(package: str) -> Path:
    import importlib

    return Path(importlib.import_module(f"gemma_edge.{package}").__file__).parent


@functools.lru_cache(maxsize=None)
def code_digest(packages: tuple[str, ...] = PACKAGES) -> str:
    """sha256 of gemma-edge's own source in `packages` (every .py and .json file): a stage's key names the
    packages its output can depend on, and any change to them changes the key."""
    h = hashlib.sha256()
    for package in packages:
        root = _package_dir(package)
        for p in sorted(root.rglob("*")):
            if p.suffix in (".py", ".json") and "__pycache__" not in p.parts:
                h.update(f"{package}/{p.relative_to(root).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Library versions and the platform, part of every key."""
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "libraries": {d: version(d) for d in LIBRARIES}}


# Files this large are restored as hard links; smaller ones (metadata a stage rewrites after restoring, such
# as source.json and manifest.json) are copied.
LINK_BYTES = 1 << 20
# Never linked: ONNX external data, which `onnx.load` refuses to read from a file with more than one link
# (its guard against hard-link attacks).
COPIED_SUFFIXES = (".data",)


def restore(output: Path, dest: Path) -> None:
    """Put an entry's files under `dest`: large ones as hard links to the entry (the disk holds them once; an
    in-place edit of one changes the entry too, and the next hit's re-hash then deletes and rebuilds the
    entry), small ones and `COPIED_SUFFIXES` as copies; copies throughout where a link is refused (another
    filesystem)."""
    for src in sorted(output.rglob("*")):
        target = dest / src.relative_to(output)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.stat().st_size >= LINK_BYTES and src.suffix not in COPIED_SUFFIXES:
            try:
                os.link(src, target)
                continue
            except OSError:
                pass
        shutil.copy2(src, target)


def max_bytes() -> int:
    return int(float(os.environ.get("GEMMA_EDGE_CACHE_MAX_GB", "20")) * 2**30)


@dataclass
class Entry:
    key: str
    stage: str
    bytes: int
    last_used: float
    inputs: dict


class BuildCache:
    """`get_or_build(stage, inputs, make)` -> a verified output folder inside the cache."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir() / "builds"

    # ---- keys ------------------------------------------------------------------------------------
    @staticmethod
    def key(stage: str, inputs: dict, code: tuple[str, ...] = PACKAGES) -> str:
        document = {"stage": stage, "inputs": inputs, "code": code_digest(code), "environment": environment()}
        return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()

    # ---- lookup and store ------------------------------------------------------------------------
    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def fetch(self, key: str) -> Path | None:
        """The entry's output folder after every file's sha256 matched `entry.json`; a damaged or partial
        entry is deleted and None returned."""
        entry = self._entry(key)
        try:
            recorded = json.loads((entry / "entry.json").read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            return None
        output = entry / "output"
        try:
            ok = tree_files(output) == recorded
        except OSError:
            ok = False
        if not ok:
            shutil.rmtree(entry, ignore_errors=True)
            return None
        os.utime(entry / "entry.json")  # least recently used goes first
        return output

    @contextlib.contextmanager
    def open(self, stage: str, inputs: dict, make: Callable[[Path], None],
             code: tuple[str, ...] = PACKAGES) -> Iterator[tuple[Path, bool]]:
        """(output folder, hit), held for the `with` block: the entry cannot be evicted or cleared while the
        caller copies from it. `make(folder)` writes the output into `folder`, which does not exist yet;
        `code`: the gemma-edge packages the output depends on."""
        key = self.key(stage, inputs, code)
        with self._lock(key):
            found = self.fetch(key)
            yield (found, True) if found is not None else (self._store(key, stage, inputs, make), False)

    def get_or_build(self, stage: str, inputs: dict, make: Callable[[Path], None],
                     code: tuple[str, ...] = PACKAGES) -> tuple[Path, bool]:
        """`open` for a caller that reads the output at once (an entry is only deleted when over the limit)."""
        with self.open(stage, inputs, make, code) as found:
            return found

    @contextlib.contextmanager
    def _lock(self, key: str, wait: bool = True) -> Iterator[bool]:
        """Hold the key's lock (yields True); with `wait=False`, yields False at once if another holds it."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{key}.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _delete(self, key: str) -> bool:
        """Delete an entry unless a process holds it (building, or restoring from it)."""
        with self._lock(key, wait=False) as held:
            if held:
                shutil.rmtree(self._entry(key), ignore_errors=True)
            return held

    def _store(self, key: str, stage: str, inputs: dict, make: Callable[[Path], None]) -> Path:
        tmp_root = self.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        clean_leftovers(tmp_root)
        tmp = tmp_root / f".{key}.{os.getpid()}.{os.urandom(4).hex()}.partial"
        tmp.mkdir()
        try:
            make(tmp / "output")
            files = tree_files(tmp / "output")
            size = sum((tmp / "output" / f).stat().st_size for f in files)
            (tmp / "entry.json").write_text(json.dumps(
                {"stage": stage, "inputs": inputs, "files": files, "bytes": size}, indent=2, sort_keys=True,
                default=str) + "\n")
            entry = self._entry(key)
            entry.parent.mkdir(parents=True, exist_ok=True)
            if entry.exists():  # left by a writer that died before its entry.json (we hold the lock)
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.evict(keep=key)
        return entry / "output"

    # ---- housekeeping ----------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        out = []
        for meta in self.root.glob("??/*/entry.json"):
            try:
                d = json.loads(meta.read_text())
                out.append(Entry(meta.parent.name, d["stage"], int(d["bytes"]), meta.stat().st_mtime, d["inputs"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(out, key=lambda e: e.last_used)

    def evict(self, keep: str | None = None, limit: int | None = None) -> int:
        """Delete least recently used entries until the total is under `limit`; returns entries deleted."""
        limit = max_bytes() if limit is None else limit
        entries = self.entries()
        total, deleted = sum(e.bytes for e in entries), 0
        for e in entries:
            if total <= limit:
                break
            if e.key == keep or not self._delete(e.key):
                continue
            total -= e.bytes
            deleted += 1
        return deleted

    def clear(self) -> int:
        """Delete every entry no process is using, and dead builders' leftovers; returns entries deleted."""
        deleted = sum(self._delete(e.key) for e in self.entries())
        clean_leftovers(self.root / "tmp")
        return deleted

    def info(self) -> str:
        entries = self.entries()
        lines = [f"cache: {self.root}", f"entries: {len(entries)}, {sum(e.bytes for e in entries) / 2**20:.1f} MiB "
                 f"(limit {max_bytes() / 2**30:.0f} GiB: $GEMMA_EDGE_CACHE_MAX_GB)"]
        by_stage: dict[str, list[Entry]] = {}
        for e in entries:
            by_stage.setdefault(e.stage, []).append(e)
        for stage, es in sorted(by_stage.items()):
            lines.append(f"  {stage:10s} {len(es):4d} entries {sum(e.bytes for e in es) / 2**20:10.1f} MiB, "
                         f"last used {time.strftime('%Y-%m-%d %H:%M', time.localtime(es[-1].last_used))}")
        return "\n".join(lines)


def default_cache(enabled: bool = True) -> BuildCache | None:
    """The user's cache, or None with `enabled=False` (`--no-cache`)."""
    if not enabled:
        return None
    try:
        return BuildCache()
    except OSError as e:
        raise GemmaEdgeError(f"{cache_dir()}: the build cache is not usable ({e}); set GEMMA_EDGE_CACHE to a "
                             "writable folder or pass --no-cache") from None

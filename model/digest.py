"""Content digests: what a file or folder holds, independent of where it lies.

`source.json` only records where a quantized checkpoint's float model lies, so a folder's digest leaves
it out: the same checkpoint copied elsewhere has the same digest (build-cache keys rely on it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

LOCATION_RECORDS = ("source.json",)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_files(folder: str | Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `folder`, in sorted order."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


_memo: dict[tuple, str] = {}


def content_digest(path: str | Path) -> str:
    """sha256 of a file, or of a folder's (relative path, sha256) list without location records.
    Remembered per file for this process while its size, mtime and inode stay the same."""
    path = Path(path)
    if path.is_file():
        return _file_digest(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_file() and rel not in LOCATION_RECORDS:
            h.update(f"{rel}\0{_file_digest(p)}\n".encode())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _memo:
        _memo[key] = sha256_file(path)
    return _memo[key]

"""Every output gemma-edge writes goes through here: checked, written aside, then swapped in.

`check_output_path` refuses a path whose replacement would destroy what the user has: an empty path (an
unset shell variable), the current directory or one that holds it, the home or root folder, an input of
the run or a folder holding one, an existing file, and an existing non-empty folder unless `overwrite`.
`atomic_dir` writes into a hidden sibling `.NAME.PID.TOKEN.partial`; on success the old output (if any)
is renamed aside, the new one renamed in, and only then the old one deleted, so a failure at any point
leaves either the old output or the new one, never neither. Partial folders of dead processes (SIGKILL)
are removed by the next write beside them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from .errors import GemmaEdgeError

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?P<kind>partial|old)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(folder: Path) -> None:
    """Remove `.partial` folders left in `folder` by dead processes; put back an old output that a dead
    process had renamed aside but not yet replaced."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        m = _LEFTOVER.match(p.name)
        if m is None or _alive(int(m["pid"])):
            continue
        target = folder / m["name"]
        if m["kind"] == "old" and not target.exists():
            os.replace(p, target)
        else:
            _remove(p)


def _leftover_name(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"


def scratch_path(out: str | Path) -> Path:
    """A temporary file's path next to `out`, named as a leftover: if this process dies before deleting it,
    the next atomic write into that folder removes it."""
    return _leftover_name(Path(out), "partial")


def check_output_path(out: str | Path, inputs: Iterable[str | Path | None] = (), overwrite: bool = False) -> Path:
    """The output path, if writing a folder there is safe; else a one-line error naming it and the fix."""
    if str(out).strip() == "":
        raise GemmaEdgeError("the output path is empty (an unset shell variable?); name a new folder")
    path = Path(out)
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise GemmaEdgeError(f"{out}: is the current directory or holds it; name a new folder inside it instead")
    if resolved in (Path.home().resolve(), Path(resolved.anchor)):
        raise GemmaEdgeError(f"{out}: refusing to write over the home or root folder; name a new folder")
    for item in inputs:
        if item is None or str(item) == "":
            continue
        source = Path(item).resolve()
        if resolved == source or resolved in source.parents:
            raise GemmaEdgeError(f"{out}: is {'the input' if resolved == source else 'a folder holding the input'} "
                                 f"{item}; writing there would destroy it; choose another output path")
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise GemmaEdgeError(f"{out}: {parent} is a file, not a folder; choose an output path in a folder")
            break
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise GemmaEdgeError(f"{out}: is a file, not a folder; choose another output path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise GemmaEdgeError(f"{out}: output already exists; choose another --out or pass --overwrite")
    return path


def _mkdir(folder: Path, out: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GemmaEdgeError(f"{out}: cannot create {folder} ({e.strerror}); choose a writable output path") from None


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to `out`; on success it replaces `out` (kept until the swap is done),
    on failure it is deleted and `out` is left as it was."""
    out = check_output_path(out, list(inputs), overwrite)
    _mkdir(out.parent, out)
    clean_leftovers(out.parent)
    tmp = _leftover_name(out, "partial")
    _mkdir(tmp, out)
    tmp.chmod(0o755)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)  # some writers create 0600 files
        _swap_in(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GemmaEdgeError(f"{out}: could not write the output ({e.strerror or e}); check free disk space "
                             "and permissions, then run again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, out: Path) -> None:
    """Rename `new` onto `out`: the old output goes aside first and comes back if the rename fails."""
    if not out.exists():
        os.replace(new, out)
        return
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
        os.replace(new, out)
        return
    aside = _leftover_name(out, "old")
    os.replace(out, aside)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(aside, out)
        raise
    _remove(aside)


@contextlib.contextmanager
def atomic_file(out: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `out`; on success it is renamed onto `out`, on failure deleted."""
    out = Path(out)
    if out.is_dir():
        raise GemmaEdgeError(f"{out}: is a folder, not a file; choose another path")
    _mkdir(out.parent, out)
    clean_leftovers(out.parent)
    tmp = _leftover_name(out, "partial")
    try:
        yield tmp
        tmp.chmod(0o644)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GemmaEdgeError(f"{out}: could not write the file ({e.strerror or e}); check free disk space "
                             "and permissions, then run again") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

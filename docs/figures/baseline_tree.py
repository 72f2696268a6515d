"""An earlier revision's gemma_edge packages, importable ahead of this tree (for side-by-side figures)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def baseline_path(rev: str, tmp: Path) -> Path:
    """A PYTHONPATH entry whose gemma_edge.* are REV's package folders (a `git worktree` of REV in `tmp`)."""
    tree = tmp / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), rev], check=True)
    pkg = tmp / "pkg" / "gemma_edge"
    pkg.mkdir(parents=True)
    for folder in sorted(tree.iterdir()):
        if (folder / "__init__.py").is_file():
            (pkg / folder.name).symlink_to(folder)
    return pkg.parent


def remove_baseline(tmp: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "tree")], check=False)

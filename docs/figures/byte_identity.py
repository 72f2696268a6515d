"""Quantize and export with an earlier revision's code and with this tree's; the sha256 of every file.

Run: python docs/figures/byte_identity.py FLOAT_SOURCE [--baseline REV] [--recipe int4-block32]
         [--only baseline|tree] [--keep DIR]
e.g. python docs/figures/byte_identity.py /path/to/hf-270m --baseline ac0c0eb

A refactor must not change one byte of what a user ships: each side runs `gemma-edge quantize --no-cache`
then `export pte` and `export onnx --no-cache` from it, in a fresh process, into the same paths (so that
paths recorded in manifests agree), and the table lists every file's sha256 on both sides. Exit 1 when a
file differs. The baseline's code is a `git worktree` of REV, put on PYTHONPATH ahead of this tree.
Both sides quantize with their own default: compare revisions on the same side of fdee0a9 (where the
default clip search became weighted by data-free statistics).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_tree import baseline_path, remove_baseline  # noqa: E402

CLI = "import sys; from gemma_edge.cli.main import main; sys.exit(main(sys.argv[1:]))"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(source: Path, recipe: str, work: Path, pythonpath: Path | None) -> dict[str, str]:
    """Quantize, export both artifacts; {relative file: sha256}."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    steps = [["quantize", str(source), "--recipe", recipe, "--out", str(work / "q"), "--no-cache"],
             ["export", "pte", str(work / "q"), "--out", str(work / "pte"), "--no-cache"],
             ["export", "onnx", str(work / "q"), "--out", str(work / "onnx"), "--no-cache"]]
    for step in steps:
        print("  gemma-edge " + " ".join(step), file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-c", CLI, *step], env=env, check=True)
    return {str(p.relative_to(work)): sha256(p) for p in sorted(work.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="the float checkpoint (HF folder or .gguf)")
    ap.add_argument("--baseline", default="HEAD", help="git revision to compare with")
    ap.add_argument("--recipe", default="int4-block32")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gemma-edge-byte-identity",
                    help="where both sides build (the same paths for both)")
    ap.add_argument("--only", choices=["baseline", "tree"], help="build one side and save its hashes")
    args = ap.parse_args()
    source = args.source.resolve()
    results: dict[str, dict[str, str]] = {}
    saved = args.work.with_name(args.work.name + f"-{args.recipe}.json")
    if saved.exists():
        results = json.loads(saved.read_text())
    sides = [args.only] if args.only else ["baseline", "tree"]
    for side in sides:
        if side == "baseline":
            tmp = Path(tempfile.mkdtemp())
            try:
                results[f"baseline {args.baseline}"] = build(source, args.recipe, args.work / "out",
                                                             baseline_path(args.baseline, tmp))
            finally:
                remove_baseline(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            results["this tree"] = build(source, args.recipe, args.work / "out", None)
        saved.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if len(results) < 2:
        print(f"hashes saved to {saved}; run the other side to compare")
        return
    (a_name, a), (b_name, b) = sorted(results.items())
    print(f"| file | {a_name} | {b_name} |\n|---|---|---|")
    differ = 0
    for f in sorted(set(a) | set(b)):
        same = a.get(f) == b.get(f)
        differ += not same
        print(f"| {f} | {a.get(f, '—')[:16]} | {'same' if same else b.get(f, '—')[:16]} |")
    print(f"\n{len(a)} files; {differ} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()

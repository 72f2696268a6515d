"""The wheel maps the top-level folders into `gemma_edge.*` and puts no generic names in site-packages."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("gemma_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"gemma_edge"}
    for module in ["model/gemma.py", "model/loader.py", "cli/main.py", "calibration/__init__.py",
                   "export/__init__.py", "runtimes/__init__.py", "runtimes/parity/thresholds.json",
                   *(f"calibration/heldout/{f}" for f in ["english.txt", "german.txt", "french.txt", "chinese.txt",
                                                          "chat.json", "README.md"])]:
        assert f"gemma_edge/{module}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gemma-edge = gemma_edge.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_model_imports_no_later_stage():
    """Data flows one way: the reference (model/) imports nothing from the stages that consume it; the
    folders they write reach `gemma_edge.model.load` through the "gemma_edge.folders" entry point."""
    import ast

    later = ("gemma_edge.calibration", "gemma_edge.export", "gemma_edge.runtimes", "gemma_edge.pipeline",
             "gemma_edge.cli")
    offenders = []
    for path in sorted((ROOT / "model").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(later)]
    assert offenders == []


def test_quantized_folders_open_through_their_entry_point():
    from gemma_edge.calibration.checkpoint import QUANTIZED_FOLDER
    from gemma_edge.model.loader import _folder_kinds

    assert QUANTIZED_FOLDER in _folder_kinds()

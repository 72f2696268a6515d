"""Quality of the LM head's format with int4 block-32 linears and the int8 table: one row per head format.

Run: python docs/figures/head_formats.py FLOAT_SOURCE [--formats int4_block32 int4_block128 int4_channel int8_channel]
         [--work DIR]
then, for speed, export the winners and run them side by side:
     gemma-edge export pte DIR/q-int8_channel --out DIR/pte-int8_channel
     python docs/figures/pte_side_by_side.py DEFAULT_PTE DIR/pte-int8_channel

Each row is `gemma-edge quantize` with a recipe whose only change is `lm_head`, then `gemma-edge eval
--against FLOAT_SOURCE` (held-out Python reference text, 512-token windows): perplexity, KL(float||q), top-1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CLI = "import sys; from gemma_edge.cli.main import main; sys.exit(main(sys.argv[1:]))"


def gemma_edge(*args: str) -> None:
    subprocess.run([sys.executable, "-c", CLI, *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("--formats", nargs="+", default=["int4_block32", "int4_block128", "int4_channel", "int8_channel"])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gemma-edge-head-formats")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for fmt in args.formats:
        recipe = args.work / f"head-{fmt}.json"
        recipe.write_text(json.dumps({"name": f"head-{fmt}", "linear": "int4_block32", "embedding": "int8_channel",
                                      "lm_head": fmt}) + "\n")
        q, report = args.work / f"q-{fmt}", args.work / f"eval-{fmt}"
        gemma_edge("quantize", str(args.source), "--recipe", str(recipe), "--out", str(q), "--overwrite")
        gemma_edge("eval", str(q), "--against", str(args.source), "--report", str(report), "--overwrite")
        r = json.loads((report / "eval.json").read_text())["result"]
        head = [row["bytes"] for row in json.loads((q / "quant_report.json").read_text())
                if row["name"] == "lm_head.weight"]
        size = f"{head[0] / 2**20:.1f} MiB" if head else "0 (the embedding's table, same format)"
        rows.append(f"| {fmt} | {size} | {r['perplexity']:.2f} | {r['kl_to_float']:.3f} | "
                    f"{r['top1_agreement']:.1%} |")
    print("| LM head | head bytes | perplexity | KL(float‖q) | top-1 |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

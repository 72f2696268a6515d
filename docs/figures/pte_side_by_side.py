"""The issue-17 table in one sitting: two `.pte` builds (e.g. an older graph and this tree's), each through
our runner and ExecuTorch's stock TextLLMRunner, and llama.cpp on the bundled GGUF, runs alternating.

Run: python docs/figures/pte_side_by_side.py OLD_PTE_FOLDER NEW_PTE_FOLDER [--runs 3]
(`gemma-edge bench NEW --stock --gguf bundled` is the same protocol for one folder.)
"""

from __future__ import annotations

import argparse

from gemma_edge.model.bundled import resolve_model_path
from gemma_edge.runtimes.bench import bench_side_by_side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    gguf = str(resolve_model_path("bundled"))
    targets = [(args.old, "runner"), (args.new, "runner"), (args.old, "stock"), (args.new, "stock"), (gguf, "runner")]
    results = bench_side_by_side(targets, runs=args.runs, verify=False)  # an older export may predate file hashes
    print("| artifact | runtime | file MiB | prefill tok/s (512) | decode tok/s | RSS after load / peak, MiB "
          "(above the interpreter's) |")
    print("|---|---|---|---|---|---|")
    for (target, mode), r in zip(targets, results):
        runtime = {"runner": "ours (executorch.runtime)", "stock": "TextLLMRunner"}[mode]
        if target == gguf:
            runtime = "llama.cpp"
        base = r["baseline_rss_mib"]
        print(f"| {target} | {runtime} | {r['file_mib']:.1f} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
              f"{r['after_load_rss_mib']:.0f} / {r['peak_rss_mib']:.0f} (+{r['after_load_rss_mib'] - base:.0f} / "
              f"+{r['peak_rss_mib'] - base:.0f}) |")


if __name__ == "__main__":
    main()

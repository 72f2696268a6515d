"""onnxruntime-genai on an exported ONNX folder with and without the shared past/present KV buffer, side by side.

Run: python docs/figures/genai_kv_share.py ONNX_FOLDER [GGUF|bundled] [RUNS]
Makes ONNX_FOLDER-separate-kv (links to the same model files, genai_config.json with
`past_present_share_buffer: false`, what exports wrote before 2026-11-30), then measures both through genai's
own loop (`gemma-edge bench --stock` protocol: 512-token prompt in one call, 64 greedy decode steps, fresh
process per run, runs alternating) and the GGUF through llama.cpp, and prints medians.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gemma_edge.model.bundled import resolve_model_path
from gemma_edge.runtimes.bench import bench_side_by_side


def separate_kv_copy(folder: Path) -> Path:
    other = folder.parent / f"{folder.name}-separate-kv"
    other.mkdir(exist_ok=True)
    for f in folder.iterdir():
        if f.name != "genai_config.json" and not (other / f.name).exists():
            (other / f.name).symlink_to(f.resolve())
    config = json.loads((folder / "genai_config.json").read_text())
    config["search"]["past_present_share_buffer"] = False
    (other / "genai_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return other


def main(folder: Path, gguf: str | None = None, runs: int = 3) -> None:
    other = separate_kv_copy(folder)
    targets = [(folder, "stock"), (other, "stock")] + ([(str(resolve_model_path(gguf)), "runner")] if gguf else [])
    reports = bench_side_by_side(targets, runs=runs, verify=False)
    print("| runtime | KV buffer | prefill tok/s | decode tok/s | RSS after load | peak RSS | interpreter |")
    print("|---|---|---|---|---|---|---|")
    labels = ["genai, shared past/present", "genai, separate (before)", "llama.cpp (GGUF)"]
    for label, r in zip(labels, reports):
        runtime, _, kv = label.partition(", ")
        print(f"| {runtime} | {kv or '-'} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
              f"{r['after_load_rss_mib']:.0f} MiB | {r['peak_rss_mib']:.0f} MiB | {r['baseline_rss_mib']:.0f} MiB |")
    print(f"\nmedians of {runs} runs, 2 threads, 512-token prompt, 64 decode steps; {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None, int(sys.argv[3]) if len(sys.argv) > 3 else 3)

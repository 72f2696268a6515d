"""Memory onnxruntime-genai's KV cache takes at several context lengths, per ONNX folder.

Run: python docs/figures/genai_kv_memory.py FOLDER [FOLDER ...] [--contexts 2048,8192,32768]
For each folder and context N (at most the folder's context_length), a fresh process loads the model, takes
its RSS, creates a generator with `max_length` N (genai allocates the shared past/present buffers there:
every layer at N, or the layers genai_config's `sliding_window` names at the window + slack), appends a
64-token prompt and takes RSS again. Prints the difference, with what the cache should take computed from
genai_config.json (float32 keys and values).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from gemma_edge.runtimes.onnx_runner import window_caches

WORKER = r"""
import json, sys
import onnxruntime_genai as og

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

folder, context = sys.argv[1], int(sys.argv[2])
model = og.Model(folder)
loaded = rss_mib()
params = og.GeneratorParams(model)
params.set_search_options(max_length=context)
generator = og.Generator(model, params)
generator.append_tokens([[2] + list(range(1000, 1063))])
print(json.dumps({"loaded_mib": loaded, "with_cache_mib": rss_mib()}))
"""


def expected_mib(folder: Path, context: int) -> float:
    """The float32 cache genai allocates at `context`: per layer 2 x kv_heads x positions x head_size x 4 bytes,
    positions min(capacity, context) for the window-sized layers (`window_caches`), context for the rest."""
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    windows = window_caches(folder)
    per_position = 2 * decoder["num_key_value_heads"] * decoder["head_size"] * 4
    positions = sum(min(windows.get(i, context), context) for i in range(decoder["num_hidden_layers"]))
    return positions * per_position / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--contexts", default="2048,8192,32768")
    args = p.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    print("| folder | context | KV cache, computed | RSS growth for the generator (measured) |")
    print("|---|---|---|---|")
    for folder in args.folders:
        limit = json.loads((folder / "genai_config.json").read_text())["model"]["context_length"]
        for context in (c for c in contexts if c <= limit):
            out = subprocess.run([sys.executable, "-c", WORKER, str(folder), str(context)], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(f"| {folder.name} | {context} | {expected_mib(folder, context):.1f} MiB | "
                  f"{r['with_cache_mib'] - r['loaded_mib']:.1f} MiB |")


if __name__ == "__main__":
    main()

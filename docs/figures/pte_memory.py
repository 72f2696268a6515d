"""Where a `.pte`'s resident memory goes under ExecuTorch's stock TextLLMRunner, measured in fresh processes.

Run: python docs/figures/pte_memory.py PTE_FOLDER [PTE_FOLDER ...] [--prompt-len 512] [--decode 64] [--weight-cache]
     [--mlock]

For each folder, a fresh process imports the runtime (baseline), constructs TextLLMRunner and generates one
token (the program is loaded, XNNPACK has packed its weights), then prefills PROMPT_LEN tokens and decodes
DECODE more. The process maps files as an app does (`gemma-edge bench`'s `unlocked_pages`); with --mlock, it may
lock them as TextLLMRunner's load mode asks (granted to root only; the figures in docs/executorch.md before
2026-12-01 "A second host" were taken that way). After loading it reads /proc/self/smaps: resident pages of the
mapped model.pte and model.ptd (file-backed) and anonymous memory (XNNPACK's packed weights,
the memory plan, the heap). The memory plan's size comes from the program itself (its non-constant
buffers); the tokenizer's, in a process of its own, from the tokenizers library the runner links (its
SentencePiece model of Gemma's 262,144 pieces: part of the anonymous memory, though not the model's).
Figures in MiB; the last column is the issue's ratio: peak above the baseline / file size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from gemma_edge.runtimes import artifact_files
from gemma_edge.runtimes.bench import measured_process_setup

WORKER = r"""
import json, sys
from pathlib import Path

from gemma_edge.runtimes import artifact_files
from gemma_edge.runtimes.bench import status_mib
from gemma_edge.runtimes.executorch_runner import StockTextRunner, load_executorch_kernels

def smaps(paths):
    file_rss = anon = 0
    current = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
            current = parts[5] if len(parts) > 5 else ""
        elif parts[:1] == ["Rss:"] and current in paths:
            file_rss += int(parts[1])
        elif parts[:1] == ["Anonymous:"]:
            anon += int(parts[1])
    return file_rss / 1024, anon / 1024

folder, prompt_len, decode, weight_cache = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
load_executorch_kernels()
import executorch.extension.llm.runner  # noqa: F401  (in the baseline, as the runner needs it)
if weight_cache:  # XNNPACK's global backend option, through the C++ API (no Python binding sets it)
    import ctypes
    import executorch

    class BackendOption(ctypes.Structure):  # runtime/backend/options.h: key[64], variant<bool, int, char[256]>
        _fields_ = [("key", ctypes.c_char * 64), ("value", ctypes.c_char * 256), ("index", ctypes.c_uint8),
                    ("pad", ctypes.c_uint8 * 3)]

    set_option = ctypes.CDLL(str(Path(executorch.__path__[0]) / "lib" / "libexecutorch.so"))[
        "_ZN10executorch7runtime10set_optionEPKcNS0_4SpanINS0_13BackendOptionEEE"]
    set_option.argtypes, set_option.restype = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_uint32
    option = BackendOption(key=b"weight_cache_enabled", value=b"\x01", index=0)
    assert set_option(b"XnnpackBackend", ctypes.addressof(option), 1) == 0
files = {str(f.resolve()) for f in artifact_files(folder)}
out = {"baseline": status_mib("VmRSS"), "baseline_anon": smaps(files)[1]}
runner = StockTextRunner(folder)
runner.generate("Hello", max_new_tokens=1)
out["after_load"] = status_mib("VmRSS")
out["file_rss"], out["anon"] = smaps(files)
runner.generate(" ".join(["river"] * (prompt_len - 1)), max_new_tokens=decode)
out["peak"] = status_mib("VmHWM")
print(json.dumps(out))
"""

TOKENIZER = r"""
import sys
from gemma_edge.runtimes.bench import status_mib
import pytorch_tokenizers.pytorch_tokenizers_cpp as cpp  # the tokenizers library TextLLMRunner links
before = status_mib("VmRSS")
cpp.SPTokenizer().load(sys.argv[1])
print(status_mib("VmRSS") - before)
"""

PLAN = r"""
import sys
from executorch.exir._serialize._program import deserialize_pte_binary
program = deserialize_pte_binary(open(sys.argv[1], "rb").read()).program
plan = next(p for p in program.execution_plan if p.name == "forward")
print(sum(plan.non_const_buffer_sizes) / 2**20)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--weight-cache", action="store_true",
                    help="turn on XNNPACK's weight cache (a backend option, off in the pip runtime) before loading")
    ap.add_argument("--mlock", action="store_true", help="let the runner lock the mapped files where the host allows")
    args = ap.parse_args()
    print("| artifact | file | baseline RSS | after load: total / mapped file / anonymous | memory plan | tokenizer | "
          f"peak ({args.prompt_len} + {args.decode} tokens) | peak above baseline / file |")
    print("|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        proc = subprocess.run([sys.executable, "-c", WORKER, str(folder), str(args.prompt_len), str(args.decode),
                               str(int(args.weight_cache))],
                              capture_output=True, text=True, check=True,
                              preexec_fn=measured_process_setup(args.mlock))
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        plan = float(subprocess.run([sys.executable, "-c", PLAN, str(folder / "model.pte")], capture_output=True,
                                    text=True, check=True).stdout.strip().splitlines()[-1])
        tokenizer = float(subprocess.run([sys.executable, "-c", TOKENIZER, str(folder / "tokenizer.model")],
                                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        size = sum(f.stat().st_size for f in artifact_files(folder)) / 2**20  # the .pte and its .ptd
        print(f"| {folder.name} | {size:.1f} | {m['baseline']:.0f} | {m['after_load']:.0f} / {m['file_rss']:.0f} / "
              f"{m['anon'] - m['baseline_anon']:.0f} | {plan:.0f} | {tokenizer:.0f} | {m['peak']:.0f} | "
              f"{(m['peak'] - m['baseline']) / size:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

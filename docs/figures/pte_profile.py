"""Where a `.pte`'s prefill and decode time goes, by operator: ExecuTorch's own profiler (ETDump + Inspector).

Run: python docs/figures/pte_profile.py PTE_FOLDER [PROMPT_LEN] [STEPS]
Loads `model.pte` (and `model.ptd` when there is one) with ETDump on, 2 threads (the `gemma-edge bench`
setting), prefills PROMPT_LEN tokens (default 512) in the `.pte`'s own call length (`get_max_seq_len`), then
decodes STEPS tokens (default 20). For the prefill (all its calls) and for one decode step (the mean) it
prints the time of the whole method, of the XNNPACK delegate calls, of each portable/custom kernel outside
them, and of the largest XNNPACK operators inside them (their numbering per delegate dropped).
(Profiling adds its own overhead: compare operators within one run, not with `gemma-edge bench`.)
"""

from __future__ import annotations

import collections
import os
import re
import sys
import tempfile
from pathlib import Path

import torch


def _table(title: str, events, calls: slice, per: int) -> None:
    """Summed time (ms) per name over the calls `calls` of each event, divided by `per`."""
    total, kernels, inside = 0.0, collections.Counter(), collections.Counter()
    for e in events:
        ms = sum(e.perf_data.raw[calls]) / per
        if e.name == "Method::execute":
            total += ms
        elif e.is_delegated_op:
            inside[re.sub(r" #\d+$", "", e.name)] += ms
        elif e.name == "DELEGATE_CALL":
            kernels["XNNPACK delegate calls"] += ms
        elif e.name != "OPERATOR_CALL":  # (the wrapper around each kernel below)
            kernels[e.name.removeprefix("native_call_")] += ms
    print(f"{title}: {total:.2f} ms")
    for name, ms in kernels.most_common(10):
        print(f"  {name:52s} {ms:7.2f} ms")
    print("  inside the delegates:")
    for name, ms in inside.most_common(8):
        print(f"    {name:50s} {ms:7.2f} ms")


def main(folder: Path, prompt_len: int = 512, steps: int = 20) -> None:
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  llama::* kernels
    import executorch.kernels.quantized  # noqa: F401  quantized_decomposed::* kernels
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    torch.set_num_threads(2)
    data = folder / "model.ptd"
    module = portable_lib._load_for_executorch(str(folder / "model.pte"), str(data) if data.exists() else None,
                                               enable_etdump=True)
    chunk = int(module.run_method("get_max_seq_len", [])[0])
    tokens = list(range(1000, 1000 + prompt_len))
    prefill_calls = 0
    for start in range(0, prompt_len, chunk):
        module.forward([torch.tensor([tokens[start:start + chunk]]), torch.tensor([start])])
        prefill_calls += 1
    for t in range(steps):
        module.forward([torch.tensor([[1000 + t]]), torch.tensor([prompt_len + t])])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "etdump.etdp")
        module.write_etdump_result_to_file(path)
        inspector = Inspector(etdump_path=path)
    events = [e for block in inspector.event_blocks if block.name == "Execute"
              for e in block.events if e.perf_data is not None]
    _table(f"prefill of {prompt_len} tokens ({prefill_calls} calls of <= {chunk})", events,
           slice(0, prefill_calls), 1)
    _table(f"decode step after {prompt_len} tokens (mean of {steps})", events, slice(prefill_calls, None), steps)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]), *(int(a) for a in args[1:3]))

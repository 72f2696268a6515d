"""`gemma-edge bench`: prefill and decode speed, time to first token, peak RSS and size of an artifact.

Each measurement runs in a fresh subprocess, so peak RSS is that of a process that loaded only the
artifact (the baseline of an interpreter with torch imported is reported beside it)."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gemma_edge.model.errors import GemmaEdgeError


def _rss_mib() -> float:
    """Peak RSS of this process. Linux's VmHWM belongs to the current address space; getrusage's
    ru_maxrss survives fork+exec and would report a large parent's peak (e.g. `gemma-edge quickstart`)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def host_description() -> dict:
    """The processor and core count figures were measured on."""
    import os
    import platform

    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "system": platform.system()}


def measure(artifact_dir: Path, prompt_len: int, decode_tokens: int, threads: int) -> dict:
    """One run: prefill `prompt_len` tokens in one call, then decode `decode_tokens` greedily."""
    import torch

    torch.set_num_threads(threads)
    baseline = _rss_mib()
    from . import open_runner

    runner = open_runner(artifact_dir, threads=threads, verify=False)  # the parent verified it
    ordinary = runner.vocab_size - 1000 if runner.vocab_size > 2000 else runner.vocab_size - 7
    first = 1000 if runner.vocab_size > 2000 else 7  # past the special tokens
    prompt = [2] + [first + (i * 7919) % ordinary for i in range(prompt_len - 1)]  # fixed ordinary ids
    t0 = time.perf_counter()
    logits = runner.prefill(prompt)
    t1 = time.perf_counter()
    token = int(logits.argmax())
    for _ in range(decode_tokens):
        token = int(runner.decode(token).argmax())
    t2 = time.perf_counter()
    return {"prefill_tok_s": prompt_len / (t1 - t0), "ttft_s": t1 - t0,
            "decode_tok_s": decode_tokens / (t2 - t1), "peak_rss_mib": _rss_mib(),
            "baseline_rss_mib": baseline}


def bench(artifact_dir: str | Path, prompt_len: int = 512, decode_tokens: int = 64, runs: int = 3,
          threads: int = 2, verify: bool = True) -> dict:
    """Medians over `runs` fresh processes; an exported folder is first checked against its manifest."""
    from . import artifact_files

    artifact_dir = Path(artifact_dir)
    files = artifact_files(artifact_dir)
    if verify and files[0].suffix != ".gguf":
        from gemma_edge.export.manifest import verify_artifact

        verify_artifact(artifact_dir)
    results = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-m", "gemma_edge.runtimes.bench", str(artifact_dir), str(prompt_len),
                               str(decode_tokens), str(threads)], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise GemmaEdgeError(f"{files[0]}: benchmark run failed: {last}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary = {k: statistics.median(r[k] for r in results) for k in results[0]}
    summary.update(file_mib=sum(f.stat().st_size for f in files) / 2**20, runs=runs, threads=threads,
                   prompt_len=prompt_len, decode_tokens=decode_tokens, artifact=str(files[0]))
    return summary


if __name__ == "__main__":  # the worker: one measurement, JSON on the last line
    folder, plen, ntok, nthreads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(measure(Path(folder), plen, ntok, nthreads)))

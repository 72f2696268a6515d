"""`gemma-edge bench`: prefill and decode speed, time to first token, peak RSS and size of an artifact.

Each measurement runs in a fresh subprocess, so peak RSS is that of a process that loaded only the
artifact (the baseline of an interpreter with torch imported is reported beside it). That process maps files
as an app does, without locking their pages in memory (`unlocked_pages`), unless `lock_pages` is asked."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from gemma_edge.model.errors import GemmaEdgeError


def status_mib(field: str) -> float | None:
    """A memory figure of this process from /proc/self/status (VmHWM: peak, VmRSS: now), None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    """Peak RSS of this process. Linux's VmHWM belongs to the current address space; getrusage's
    ru_maxrss survives fork+exec and would report a large parent's peak (e.g. `gemma-edge quickstart`)."""
    peak = status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def _current_rss_mib() -> float:
    now = status_mib("VmRSS")
    return now if now is not None else float("nan")


def _prompt_ids(vocab_size: int, prompt_len: int) -> list[int]:
    """BOS and fixed ordinary ids (past the special tokens): the same prompt for every runtime."""
    ordinary = vocab_size - 1000 if vocab_size > 2000 else vocab_size - 7
    first = 1000 if vocab_size > 2000 else 7
    return [2] + [first + (i * 7919) % ordinary for i in range(prompt_len - 1)]


def _figures(prompt_len: int, decode_tokens: int, times: tuple[float, float, float], after_load: float,
             baseline: float) -> dict:
    """A run's figures from its clock readings: before prefill, after prefill (first token), after decode."""
    t0, t1, t2 = times
    return {"prefill_tok_s": prompt_len / (t1 - t0), "ttft_s": t1 - t0,
            "decode_tok_s": decode_tokens / (t2 - t1), "peak_rss_mib": _rss_mib(),
            "after_load_rss_mib": after_load, "baseline_rss_mib": baseline}


def measure(artifact_dir: Path, prompt_len: int, decode_tokens: int, threads: int) -> dict:
    """One run through our runner: prefill `prompt_len` tokens in one call, then decode `decode_tokens` greedily."""
    import torch

    torch.set_num_threads(threads)
    baseline = _rss_mib()
    from . import open_runner

    runner = open_runner(artifact_dir, threads=threads, verify=False)  # the parent verified it
    after_load = _current_rss_mib()
    prompt = _prompt_ids(runner.vocab_size, prompt_len)
    t0 = time.perf_counter()
    logits = runner.prefill(prompt)
    t1 = time.perf_counter()
    token = int(logits.argmax())
    for _ in range(decode_tokens):
        token = int(runner.decode(token).argmax())
    t2 = time.perf_counter()
    return _figures(prompt_len, decode_tokens, (t0, t1, t2), after_load, baseline)


def _stock_prompt(tokenizer_model: Path, prompt_len: int) -> str:
    """A text the runner will tokenize to at most `prompt_len` tokens with BOS ("a a a ...": one token per
    word in Gemma's vocabulary; fewer words where a smaller vocabulary splits them)."""
    from gemma_edge.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_model)
    words = prompt_len - 1
    while words > 1 and len(tokenizer.encode(" ".join(["a"] * words))) > prompt_len:
        words -= 1
    return " ".join(["a"] * words)


def measure_stock(artifact_dir: Path, prompt_len: int, decode_tokens: int, threads: int) -> dict:
    """One run through ExecuTorch's own C++ TextLLMRunner (what Android's LlmModule wraps) on a `.pte` folder:
    RSS after it loaded the program and produced one token, then a `prompt_len`-token prompt (a repeated
    word, tokenized by the runner) and up to `decode_tokens` more (it stops at an end token); rates from the
    runner's own stats, as it prints them."""
    from .executorch_runner import StockTextRunner

    baseline = _rss_mib()
    folder = Path(artifact_dir)
    runner = StockTextRunner(folder)
    runner.generate("Hello", max_new_tokens=1)
    after_load = _current_rss_mib()
    _, s = runner.generate(_stock_prompt(folder / "tokenizer.model", prompt_len), max_new_tokens=decode_tokens + 1)
    prefill_ms = max(s["prompt_eval_end_ms"] - s["inference_start_ms"], 1)
    decode_ms = max(s["inference_end_ms"] - s["prompt_eval_end_ms"], 1)
    # generated_tokens counts the decode steps after the prompt's token, as the runner's own rates do
    return {"prefill_tok_s": s["prompt_tokens"] / prefill_ms * 1000, "ttft_s": prefill_ms / 1000,
            "decode_tok_s": s["generated_tokens"] / decode_ms * 1000, "peak_rss_mib": _rss_mib(),
            "after_load_rss_mib": after_load, "baseline_rss_mib": baseline,
            "stock_prompt_tokens": s["prompt_tokens"], "stock_decoded_tokens": s["generated_tokens"]}


def measure_genai(artifact_dir: Path, prompt_len: int, decode_tokens: int, threads: int) -> dict:
    """One run through onnxruntime-genai's own loop on an ONNX folder (what a genai app runs): `og.Model`
    with `threads` intra-op threads, the prompt appended in one call (prefill), then `decode_tokens` greedy
    steps; genai keeps the KV cache as the folder's genai_config says (shared past/present buffer or not)."""
    import onnxruntime_genai as og

    from .genai_runner import genai_max_length

    baseline = _rss_mib()
    config = og.Config(str(artifact_dir))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    after_load = _current_rss_mib()
    prompt = _prompt_ids(json.loads((Path(artifact_dir) / "genai_config.json").read_text())["model"]["vocab_size"],
                         prompt_len)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=genai_max_length(artifact_dir, prompt_len + decode_tokens + 1))
    generator = og.Generator(model, params)
    t0 = time.perf_counter()
    generator.append_tokens(prompt)
    generator.get_next_tokens()
    t1 = time.perf_counter()
    for _ in range(decode_tokens):
        generator.generate_next_token()
        generator.get_next_tokens()
    t2 = time.perf_counter()
    return _figures(prompt_len, decode_tokens, (t0, t1, t2), after_load, baseline)


def measure_own_loop(artifact_dir: Path, prompt_len: int, decode_tokens: int, threads: int) -> dict:
    """The runtime's own generation loop: ExecuTorch's TextLLMRunner for a `.pte`, genai for an ONNX folder."""
    pte = (Path(artifact_dir) / "model.pte").exists()
    return (measure_stock if pte else measure_genai)(artifact_dir, prompt_len, decode_tokens, threads)


MEASURES = {"runner": measure, "stock": measure_own_loop}


PR_CAPBSET_DROP, CAP_IPC_LOCK = 24, 14  # <linux/prctl.h>, <linux/capability.h>


def unlocked_pages() -> None:
    """In a measured process before it starts (Linux): no page of a mapped file can be locked in memory, as in
    an Android app or an unprivileged process. ExecuTorch's Python bindings and TextLLMRunner map a `.pte`
    asking `mlock` of every segment and carry on when it is refused (`UseMlockIgnoreErrors`), which the
    default RLIMIT_MEMLOCK does; the demo app loads with LlmModule's LOAD_MODE_MMAP (no mlock), and llama.cpp
    maps without locking by default. Only a root process gets the lock, and then the whole int8 gather table
    is resident where a prompt reads a few of its rows (docs/executorch.md)."""
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    if os.geteuid() == 0:  # root's CAP_IPC_LOCK ignores the limit; drop it from what the program will hold
        ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0)


def measured_process_setup(lock_pages: bool = False) -> Callable[[], None] | None:
    """The `preexec_fn` of a measured process: `unlocked_pages` on Linux unless `lock_pages`, else nothing."""
    return None if lock_pages or sys.platform != "linux" else unlocked_pages


def _run_once(target: Path, mode: str, prompt_len: int, decode_tokens: int, threads: int,
              lock_pages: bool = False) -> dict:
    proc = subprocess.run([sys.executable, "-m", "gemma_edge.runtimes.bench", mode, str(target), str(prompt_len),
                           str(decode_tokens), str(threads)], capture_output=True, text=True,
                          preexec_fn=measured_process_setup(lock_pages))
    if proc.returncode != 0:
        from . import exit_reason

        raise GemmaEdgeError(f"{target}: benchmark run failed: {exit_reason(proc)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_side_by_side(targets: list[tuple[str | Path, str]], prompt_len: int = 512, decode_tokens: int = 64,
                       runs: int = 3, threads: int = 2, verify: bool = True, lock_pages: bool = False) -> list[dict]:
    """Medians over `runs` fresh processes per (artifact, mode), mode "runner" (ours) or "stock" (the runtime's
    own loop: ExecuTorch's TextLLMRunner, onnxruntime-genai). Run i of every target comes before run i+1 of any, so drift of a shared host hits all of
    them alike. Exported folders are first checked against their manifests. `lock_pages` lets the processes
    lock mapped pages where the host allows it (a root process), instead of mapping as an app does."""
    from . import artifact_files

    files = [artifact_files(target) for target, _ in targets]
    for (target, mode), fs in zip(targets, files):
        if mode not in MEASURES:
            raise GemmaEdgeError(f"unknown bench mode {mode!r}; one of {', '.join(MEASURES)}")
        if mode == "stock" and fs[0].suffix not in (".pte", ".onnx"):
            raise GemmaEdgeError(f"{target}: the stock runtimes measure a .pte or ONNX folder, not {fs[0].name}")
    if verify:
        from gemma_edge.export.manifest import verify_artifact

        for target in dict.fromkeys(str(t) for (t, _), fs in zip(targets, files) if fs[0].suffix != ".gguf"):
            verify_artifact(target)
    results: list[list[dict]] = [[] for _ in targets]
    for _ in range(runs):
        for i, (target, mode) in enumerate(targets):
            results[i].append(_run_once(Path(target), mode, prompt_len, decode_tokens, threads, lock_pages))
    summaries = []
    for (_, mode), fs, rs in zip(targets, files, results):
        summary = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        summary.update(file_mib=sum(f.stat().st_size for f in fs) / 2**20, runs=runs, threads=threads,
                       prompt_len=prompt_len, decode_tokens=decode_tokens, artifact=str(fs[0]), mode=mode,
                       pages_locked=lock_pages)
        summaries.append(summary)
    return summaries


def bench(artifact_dir: str | Path, prompt_len: int = 512, decode_tokens: int = 64, runs: int = 3,
          threads: int = 2, verify: bool = True) -> dict:
    """Medians over `runs` fresh processes of one artifact through our runner."""
    return bench_side_by_side([(artifact_dir, "runner")], prompt_len, decode_tokens, runs, threads, verify)[0]


if __name__ == "__main__":  # the worker: one measurement, JSON on the last line
    mode, folder, plen, ntok, nthreads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    print(json.dumps(MEASURES[mode](Path(folder), plen, ntok, nthreads)))

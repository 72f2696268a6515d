"""`gemma-edge export pte | onnx`, `gemma-edge bench`: device artifacts and their speed."""

from __future__ import annotations

import argparse
import json

from gemma_edge.runtimes.backends import BACKENDS

from .common import MODEL_HELP, add_cache_option, add_command, add_verify_option, positive_int


def cmd_export(args: argparse.Namespace) -> None:
    from gemma_edge.export.manifest import read_manifest
    from gemma_edge.pipeline.build import export
    from gemma_edge.runtimes import artifact_files

    out = export(args.model, args.out, args.format, max_seq_len=args.max_seq_len, text_only=args.text_only,
                 cache=not args.no_cache, overwrite=args.overwrite, int8_activations=args.int8_activations,
                 windowed_kv=args.windowed_kv, prefill_chunk=args.prefill_chunk)
    manifest = read_manifest(out)
    files = [p.name for p in artifact_files(out)]
    size = sum(manifest["files"][n]["bytes"] for n in files) / 2**20
    print(f"wrote {out}: {' + '.join(files)} ({size:.1f} MiB, {manifest['artifact']} sha256 "
          f"{manifest['sha256'][:16]}…), {', '.join(n for n in manifest['files'] if n not in files)}, manifest.json")


def cmd_bench(args: argparse.Namespace) -> None:
    from gemma_edge.model.bundled import resolve_model_path
    from gemma_edge.runtimes.bench import bench_side_by_side

    targets = [(a, mode) for a in args.artifact for mode in (("runner", "stock") if args.stock else ("runner",))]
    targets += [(str(resolve_model_path(args.gguf)), "runner")] if args.gguf else []
    reports = bench_side_by_side(targets, prompt_len=args.prompt_len, decode_tokens=args.decode_tokens, runs=args.runs,
                                 threads=args.threads, verify=not args.no_verify, lock_pages=args.mlock)
    for r in reports:
        stock = " through ExecuTorch's TextLLMRunner" if r["artifact"].endswith(".pte") else " through onnxruntime-genai"
        how = stock if r["mode"] == "stock" else ""
        print(f"{r['artifact']}{how}  ({r['file_mib']:.1f} MiB, {r['threads']} threads, median of {r['runs']} runs)")
        print(f"  prefill  {r['prefill_tok_s']:8.1f} tok/s over {r['prompt_len']} tokens (time to first token {r['ttft_s']:.3f} s)")
        print(f"  decode   {r['decode_tok_s']:8.1f} tok/s after a {r['prompt_len']}-token prompt")
        print(f"  RSS      {r['after_load_rss_mib']:8.1f} MiB after load, {r['peak_rss_mib']:.1f} peak (interpreter "
              f"before loading: {r['baseline_rss_mib']:.1f})")
    if len(reports) > 1:
        print("(runs alternate between the artifacts; the figures are medians)")
    print("(mapped pages locked in memory where the host allows it)" if args.mlock
          else "(files mapped as an app maps them, no page locked in memory)")
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, sort_keys=True))


def register(sub) -> None:
    p = add_command(sub, "export", cmd_export, "export a device artifact (.pte or ONNX)",
                    "Export MODEL (a float checkpoint or a QuantizedCheckpoint folder) for a runtime. "
                    "`pte`: ExecuTorch program lowered to XNNPACK with fused sliding-window attention "
                    "(llama::update_cache / custom_sdpa), the runner metadata Android's LlmModule reads, plus "
                    "tokenizer.model and manifest.json. `onnx`: model.onnx + model.onnx.data on ONNX Runtime's "
                    "GroupQueryAttention (local_window_size on sliding layers) and MatMulNBits, genai_config.json "
                    "for onnxruntime-genai, tokenizer.model, manifest.json. Integers and scales come from the "
                    "checkpoint unchanged.")
    p.add_argument("format", choices=list(BACKENDS), help="artifact kind")
    p.add_argument("model", help=MODEL_HELP + ", or a quantized checkpoint folder")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--max-seq-len", type=positive_int, default=2048, help="KV-cache length (longest prompt + answer)")
    p.add_argument("--prefill-chunk", type=positive_int, default=None,
                   help="pte only: tokens one call of the .pte takes (its get_max_seq_len; ExecuTorch's runner "
                        "and ours split longer prompts). The memory plan and XNNPACK's workspace are sized for "
                        "it. Default: 256 (the whole --max-seq-len with a vision tower: ExecuTorch's "
                        "MultimodalRunner does not split prompts)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_cache_option(p)
    p.add_argument("--text-only", action="store_true",
                   help="leave out the vision tower of a multimodal (4B+) checkpoint. With it, the .pte has "
                        "ExecuTorch MultimodalRunner's vision_encoder, token_embedding and text_decoder methods, "
                        "and the ONNX folder onnxruntime-genai's gemma3 layout: vision.onnx, embedding.onnx and "
                        "model.onnx fed embeddings (standard Attention with the image mask instead of GQA)")
    p.add_argument("--int8-activations", action="store_true",
                   help="onnx only, the speed path: every MatMulNBits at accuracy_level 4, so onnxruntime "
                        "quantizes each input to int8 per block of the weight (as the .pte's XNNPACK does per "
                        "token). Parity judges it against a reference that does the same; without it the "
                        "folder keeps float activations and matches its reference exactly")
    p.add_argument("--windowed-kv", action="store_true",
                   help="onnx only: sliding layers keep a KV cache of the window + 16 positions instead of the "
                        "whole context (GroupQueryAttention sliding_window_cache; 64 instead of 288 MiB at 8K "
                        "for the 270M). A genai app must then set max_length to at least the window (512 for "
                        "270M/1B), or GroupQueryAttention refuses the cache")

    p = add_command(sub, "bench", cmd_bench, "prefill/decode speed, TTFT, peak RSS and size of artifacts",
                    "Measure exported folders in fresh subprocesses: prefill tok/s of a PROMPT_LEN-token prompt, "
                    "decode tok/s after it, time to first token, peak RSS; the median of --runs. With --gguf, the "
                    "same for a GGUF through llama.cpp (and, with --stock, for each folder through its runtime's own "
                    "loop: ExecuTorch's TextLLMRunner for a .pte, onnxruntime-genai for ONNX). Several folders are "
                    "measured side by side: runs alternate between all of them, so a drifting host hits each alike. "
                    "Each process maps files as an app does, without locking their pages in memory (see --mlock).")
    p.add_argument("artifact", nargs="+", help="folders with model.pte or model.onnx")
    p.add_argument("--gguf", help="also measure this GGUF (or `bundled`) through llama-cpp-python, with the same "
                                  "protocol, side by side (needs pip install llama-cpp-python)")
    p.add_argument("--stock", action="store_true", help="also measure the folder through its runtime's own loop: "
                   "a .pte through ExecuTorch's C++ TextLLMRunner (what Android's LlmModule wraps), an ONNX folder "
                   "through onnxruntime-genai (what a genai app runs)")
    p.add_argument("--prompt-len", type=positive_int, default=512,
                   help="prompt tokens, prefilled in one call (a .pte: in calls of its get_max_seq_len)")
    p.add_argument("--decode-tokens", type=positive_int, default=64, help="tokens decoded after the prompt")
    p.add_argument("--runs", type=positive_int, default=3, help="fresh processes measured; figures are their medians")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads of each runtime")
    p.add_argument("--mlock", action="store_true",
                   help="let the runtimes lock mapped pages in memory where the host allows it (a root process: "
                        "ExecuTorch then keeps the whole .pte's constants resident); by default they map as an "
                        "Android app or unprivileged process does, reading pages in as they are used")
    p.add_argument("--json", action="store_true", help="also print the raw JSON")
    add_verify_option(p)

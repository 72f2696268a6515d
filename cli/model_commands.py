"""`gemma-edge inspect | convert | run`: the reference model's commands."""

from __future__ import annotations

import argparse

from gemma_edge.model.errors import GemmaEdgeError

from .common import (MODEL_HELP, add_cache_option, add_command, add_verify_option, non_negative_float,
                     non_negative_int, positive_float, positive_int, probability, seed, utf8_text)


def cmd_inspect(args: argparse.Namespace) -> None:
    from gemma_edge.model import PRESETS, read_config
    from gemma_edge.model.bundled import resolve_model_path
    from gemma_edge.model.inspect import describe

    if args.preset:
        config, name = PRESETS[args.preset], f"preset {args.preset} (shapes only)"
    elif args.model:
        path = resolve_model_path(args.model)
        config, name = read_config(path), str(path)
    else:
        raise GemmaEdgeError("inspect needs MODEL or --preset NAME")
    print(f"# {name}")
    print(describe(config, context=args.context, kv_bytes=args.kv_bytes))


def cmd_convert(args: argparse.Namespace) -> None:
    from gemma_edge.pipeline.build import convert

    out = convert(args.model, args.out, dtype=args.dtype, cache=not args.no_cache, overwrite=args.overwrite)
    print(f"wrote {out} (config.json, model.safetensors, tokenizer.model)")


def cmd_random_checkpoint(args: argparse.Namespace) -> None:
    from gemma_edge.model.random_checkpoint import write_random_checkpoint

    out = write_random_checkpoint(args.preset, args.out, seed=args.seed, overwrite=args.overwrite,
                                  text_only=args.text_only)
    shards = sorted(out.glob("model-*.safetensors"))
    size = sum(p.stat().st_size for p in shards) / 2**30
    print(f"wrote {out}: {len(shards)} bf16 shards ({size:.2f} GiB) + model.safetensors.index.json, config.json, "
          "tokenizer.model")


def cmd_gguf(args: argparse.Namespace) -> None:
    from gemma_edge.model.bundled import resolve_model_path
    from gemma_edge.model.gguf_file import write_quantized_gguf

    out = write_quantized_gguf(resolve_model_path(args.model), args.out, args.type)
    print(f"wrote {out} ({args.type}, {out.stat().st_size / 2**20:,.0f} MiB)")


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    from gemma_edge.model import ReferenceRunner, Sampling, StreamDecoder, format_chat, generate, load
    from gemma_edge.model.bundled import resolve_model_path
    from gemma_edge.model.image_processing import BOI

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    if (path / "manifest.json").is_file():  # an exported artifact: run it in its runtime
        return _run_artifact(args, path)
    loaded = load(path, max_seq_len=args.max_seq_len)
    tok = loaded.tokenizer
    if tok is None:
        raise GemmaEdgeError(f"{loaded.source}: no tokenizer.model beside the weights; copy it there to run text prompts")
    content = args.prompt
    if args.image and BOI not in content:
        content = BOI * len(args.image) + content  # images first, as the HF chat template places them
    text = format_chat([{"role": "user", "content": content}]) if args.chat else content
    image_features = None
    if args.image:
        ids, image_features = _image_prompt(args, loaded, text)
    else:
        ids = tok.encode(text)
    stream = StreamDecoder(tok)
    stops = set(tok.stop_ids)

    def show(token: int) -> None:
        if token not in stops:
            print(stream.push(token), end="", flush=True)

    if not args.chat:
        print(args.prompt, end="", flush=True)
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    generate(ReferenceRunner(loaded.model, image_features), ids, args.max_new_tokens, sampling, stops, on_token=show)
    print()


def _run_artifact(args: argparse.Namespace, folder) -> None:
    """`gemma-edge run ARTIFACT_FOLDER`: the same generation loop over the exported model's own runtime."""
    from gemma_edge.export.manifest import read_manifest
    from gemma_edge.model import Sampling, StreamDecoder, Tokenizer, format_chat, generate
    from gemma_edge.runtimes import open_runner

    if args.image:
        raise GemmaEdgeError(f"{folder}: run --image takes a checkpoint; check an exported multimodal artifact "
                             "with gemma-edge parity --image")
    runner = open_runner(folder, threads=args.threads, verify=not args.no_verify)  # checks the files first
    meta = read_manifest(folder).get("metadata", {})
    tok = Tokenizer((folder / "tokenizer.model").read_bytes(), str(folder / "tokenizer.model"),
                    meta.get("get_bos_id", meta.get("bos_id")))
    text = format_chat([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    stream, stops = StreamDecoder(tok), set(tok.stop_ids)
    if not args.chat:
        print(args.prompt, end="", flush=True)
    generate(runner, tok.encode(text), args.max_new_tokens, Sampling(args.temperature, args.top_k, args.top_p, args.seed),
             stops, on_token=lambda t: t in stops or print(stream.push(t), end="", flush=True))
    print()


def _image_prompt(args: argparse.Namespace, loaded, text: str):
    """Token ids of `text` with its images expanded, and the images' soft tokens from the vision encoder."""
    import torch

    from gemma_edge.model.image_processing import image_prompt, open_image, settings_for
    from gemma_edge.model.loader import load_vision

    encoder = load_vision(loaded.source)
    settings = settings_for(loaded.source, encoder.config.image_size, args.pan_and_scan)
    ids, pixels = image_prompt(text, [open_image(f) for f in args.image], settings, loaded.tokenizer, encoder.config)
    with torch.no_grad():
        return ids, encoder(pixels)


def register(sub) -> None:
    from gemma_edge.model import PRESETS

    p = add_command(sub, "inspect", cmd_inspect, "config, parameter counts, weight and KV-cache memory",
             "Print a checkpoint's config, parameter counts (embedding vs the rest), layer pattern, weight memory "
             "per format and the KV-cache planner: memory at a context with ring caches for sliding layers "
             "versus every layer global. Reads only the config, not the weights.")
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("--preset", choices=sorted(PRESETS), help="inspect a released shape instead of a checkpoint")
    p.add_argument("--context", type=positive_int, default=32_768, help="context length for the KV-cache planner")
    p.add_argument("--kv-bytes", type=positive_float, default=2.0, help="bytes per cached value (2 = bf16, 1 = int8)")

    p = add_command(sub, "convert", cmd_convert, "write a checkpoint (e.g. GGUF) as an HF folder",
             "Write MODEL as a Hugging Face folder (config.json, model.safetensors, tokenizer.model) that "
             "transformers' Gemma3ForCausalLM loads. GGUF weights are dequantized; the +1 llama.cpp folds "
             "into norm weights is removed. The folder appears only when complete.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="weight dtype of the written folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_cache_option(p)

    p = add_command(sub, "random-checkpoint", cmd_random_checkpoint,
                    "write random weights at a released shape (1B, 4B) for scale runs",
                    "Write a checkpoint at a released Gemma 3 shape as the hub writes one: bf16 safetensors "
                    "shards with model.safetensors.index.json, config.json and the bundled SentencePiece "
                    "tokenizer.model; the 4B multimodal, with its SigLIP tower (Gemma3ForConditionalGeneration "
                    "layout). Weights are random (seeded per tensor), scaled like a trained model's, for "
                    "measuring time and memory at sizes no download is available for here; memory stays near one "
                    "2 GiB shard.")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="the released shape")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--text-only", action="store_true", help="the 4B's text decoder alone (Gemma3ForCausalLM layout)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    p = add_command(sub, "gguf", cmd_gguf, "write a float checkpoint as a llama.cpp GGUF (bench's other side)",
                    "Write MODEL's text decoder as a Gemma 3 GGUF the way llama.cpp's convert_hf_to_gguf.py does "
                    "(bfloat16 matrices, norms stored as 1 + w, the SentencePiece vocabulary), then quantize it "
                    "with llama.cpp's own quantizer (llama-cpp-python) and its default per-tensor choices: for "
                    "`gemma-edge bench --gguf` on checkpoints no GGUF was published for (the random 1B/4B). "
                    "Tensors stream one at a time; the file appears only when complete.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument("--type", default="q4_0", choices=["q4_0", "q4_k_m", "q8_0", "bf16"],
                   help="llama.cpp's format (q4_0: int4 in blocks of 32 with a float16 scale, like int4-block32)")

    p = add_command(sub, "run", cmd_run, "generate text with the reference or an exported artifact",
             "Generate from a prompt with the reference model of a checkpoint, or with an exported artifact "
             "folder in its own runtime (ExecuTorch, ONNX Runtime; its files checked against manifest.json "
             "first), streaming text to stdout. Greedy unless "
             "--temperature > 0. Stops at <eos> or <end_of_turn>. With --image (Gemma 3 4B+ HF folders), the "
             "SigLIP encoder turns each image into 256 soft tokens that attend to each other bidirectionally.")
    p.add_argument("model", help=MODEL_HELP + ", or a folder written by gemma-edge export")
    p.add_argument("--prompt", required=True, type=utf8_text, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in Gemma's chat template")
    p.add_argument("--image", nargs="+", metavar="FILE",
                   help="images for a multimodal (4B+) checkpoint; each <start_of_image> in the prompt marks "
                        "where one goes, otherwise they come first")
    p.add_argument("--pan-and-scan", action="store_true",
                   help="also feed crops of elongated images (Gemma 3's Pan & Scan), 256 tokens each")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate at most")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 means greedy")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="0 disables")
    p.add_argument("--top-p", type=probability, default=1.0, help="1.0 disables")
    p.add_argument("--seed", type=seed, default=0, help="sampling seed")
    p.add_argument("--max-seq-len", type=positive_int, default=None, help="KV-cache length (default min(4096, context))")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    add_verify_option(p)

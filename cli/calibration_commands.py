"""`gemma-edge calibrate | quantize | eval`: calibration statistics, PTQ, and what a recipe costs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gemma_edge.model.errors import GemmaEdgeError

from .common import MODEL_HELP, add_command


def _calibration_sequences(args: argparse.Namespace, loaded):
    from gemma_edge.calibration.data import read_texts, sample_sequences, token_sequences

    if args.calib:
        return token_sequences(read_texts(args.calib), loaded.tokenizer, args.seq_len, args.samples)
    return sample_sequences(loaded, args.samples, args.seq_len, seed=args.seed)


def _load_model(model: str, max_seq_len: int):
    from gemma_edge.model import load
    from gemma_edge.model.bundled import resolve_model_path

    loaded = load(resolve_model_path(model), max_seq_len=max_seq_len)
    if loaded.tokenizer is None:
        raise GemmaEdgeError(f"{loaded.source}: no tokenizer.model; calibration needs the tokenizer")
    return loaded


def cmd_calibrate(args: argparse.Namespace) -> None:
    from gemma_edge.calibration.observers import collect_stats

    loaded = _load_model(args.model, args.seq_len)
    stats = collect_stats(loaded.model, _calibration_sequences(args, loaded))
    out = stats.save(args.out, overwrite=args.overwrite)
    print(f"wrote {out}/stats.json and importance.safetensors ({stats.num_sequences} sequences x {stats.seq_len} tokens)")


def cmd_quantize(args: argparse.Namespace) -> None:
    import dataclasses

    from gemma_edge.calibration.observers import CalibrationStats, collect_stats
    from gemma_edge.calibration.ptq import quantize_model
    from gemma_edge.calibration.recipe import QuantRecipe

    recipe = QuantRecipe.load(args.recipe)
    if args.clip:
        recipe = dataclasses.replace(recipe, clip=args.clip)
    if Path(args.out).exists() and not args.overwrite:
        raise GemmaEdgeError(f"{args.out}: output already exists; choose another --out or pass --overwrite")
    loaded = _load_model(args.model, args.seq_len)
    stats = None
    if args.stats:
        stats = CalibrationStats.load(args.stats)
    elif args.calib:
        stats = collect_stats(loaded.model, _calibration_sequences(args, loaded))
    ckpt = quantize_model(loaded, recipe, stats)
    out = ckpt.save(args.out, overwrite=args.overwrite)
    size = sum(r["bytes"] for r in ckpt.report)
    print(f"wrote {out} ({recipe.name}, clip {recipe.clip}, "
          f"{'activation-weighted' if stats else 'weight'} error, {size / 2**20:.1f} MiB of weights)")


def cmd_eval(args: argparse.Namespace) -> None:
    from gemma_edge.calibration.data import held_out_text, read_texts
    from gemma_edge.calibration.evaluate import evaluate, plot_weight_errors, weight_errors
    from gemma_edge.model.atomic import atomic_dir

    model = _load_model(args.model, args.seq_len)
    text = "\n\n".join(read_texts(args.text)) if args.text else held_out_text()
    tokens = model.tokenizer.encode(text)
    reference = _load_model(args.against, args.seq_len) if args.against else None
    result = evaluate(model.model, tokens, args.seq_len, reference.model if reference else None)
    print(f"tokens {result.tokens}  perplexity {result.perplexity:.3f}", end="")
    if reference is not None:
        print(f"  (float {result.reference_perplexity:.3f})  KL(float||model) {result.kl_to_float:.4f}  "
              f"top-1 agreement {result.top1_agreement:.2%}")
    else:
        print()
    if args.report:
        with atomic_dir(args.report, overwrite=True) as tmp:
            report = {"model": str(model.source), "against": str(reference.source) if reference else None,
                      "seq_len": args.seq_len, "text": [str(t) for t in args.text] or ["held-out: pydoc_data"],
                      "result": result.to_dict()}
            if reference is not None:
                report["float_perplexity"] = result.reference_perplexity
                floats = dict(reference.model.state_dict())
                floats.setdefault("lm_head.weight", floats["embed_tokens.weight"])  # a tied head is the table
                rows = weight_errors(floats, dict(model.model.state_dict()))
                rows = [r for r in rows if "cache" not in r["name"]]
                report["weight_errors"] = rows
                plot_weight_errors(rows, tmp / "weight_errors.png", f"{model.source.name}: weight error per layer")
            (tmp / "eval.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.report}/eval.json" + (" and weight_errors.png" if reference else ""))


def _calib_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", nargs="+", default=[], metavar="FILE",
                   help="calibration text (.txt, or .jsonl with a 'text' field); default: sample from the model")
    p.add_argument("--samples", type=int, default=8, help="number of calibration sequences")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sequence")
    p.add_argument("--seed", type=int, default=0, help="seed for data-free sampling")


def register(sub) -> None:
    from gemma_edge.calibration.recipe import PRESETS

    p = add_command(sub, "calibrate", cmd_calibrate, "record per-layer activation statistics",
                    "Run calibration text through the float model and record, for every projection's input: "
                    "absolute max, 99.9/99.99 percentiles, outlier ratio (stats.json) and per-feature E[x^2] "
                    "(importance.safetensors), which `quantize --stats` uses to weigh the clipping search. "
                    "Without --calib the text is sampled from the model itself (data-free, seeded).")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true")
    _calib_options(p)

    p = add_command(sub, "quantize", cmd_quantize, "post-training quantization to a QuantizedCheckpoint",
                    "Quantize MODEL with a recipe and write a QuantizedCheckpoint folder (integers, bf16 scales, "
                    "recipe.json, config.json, tokenizer.model, quant_report.json) that the exporters consume "
                    f"and `gemma_edge.model.load` opens as the quantized reference. Presets: {', '.join(PRESETS)}.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--recipe", required=True, help="a preset name or a recipe JSON file")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--clip", choices=["mse", "minmax"], help="override the recipe's clipping method")
    p.add_argument("--stats", help="calibration folder from `gemma-edge calibrate` (activation-weighted search)")
    p.add_argument("--overwrite", action="store_true")
    _calib_options(p)

    p = add_command(sub, "eval", cmd_eval, "perplexity, KL and top-1 agreement against the float model",
                    "Teacher-forced evaluation on held-out text: perplexity of MODEL; with --against FLOAT_MODEL "
                    "also KL(float||model), top-1 agreement, and a per-layer weight-error table and plot "
                    "(--report). Default text: the Python language reference shipped with CPython, never "
                    "used for calibration.")
    p.add_argument("model", help=MODEL_HELP + ", or a quantized checkpoint folder")
    p.add_argument("--against", help="the float model to compare with")
    p.add_argument("--text", nargs="+", default=[], metavar="FILE", help="held-out text files")
    p.add_argument("--seq-len", type=int, default=512, help="evaluation window")
    p.add_argument("--report", help="folder for eval.json and weight_errors.png")

"""`gemma-edge calibrate | quantize | eval`: calibration statistics, PTQ, and what a recipe costs."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from gemma_edge.model.errors import GemmaEdgeError

from .common import (MODEL_HELP, add_cache_option, add_command, non_negative_float, non_negative_int,
                     positive_float, positive_int, seed)


def _calibration_sequences(args: argparse.Namespace, loaded):
    from gemma_edge.calibration.data import read_texts, sample_sequences, token_sequences

    if args.calib:
        return token_sequences(read_texts(args.calib), loaded.tokenizer, args.seq_len, args.samples)
    return sample_sequences(loaded, args.samples, args.seq_len, seed=args.seed)


def _qat_sequences(args: argparse.Namespace, loaded):
    """QAT's training text: --data, else the built-in English prose, chat turns and code that share nothing with
    the held-out domains (`training_documents`) interleaved with --sampled sequences the float model writes from
    the multilingual requests of data-free calibration (`sample_sequences`): no text in German, French,
    Chinese, ... ships on this machine, and QAT learns only the domains it is shown (docs/quantization.md)."""
    from gemma_edge.calibration.data import interleave, sample_sequences, token_sequences, training_documents

    if args.calib:
        return _calibration_sequences(args, loaded)
    sampled = min(args.samples // 2 if args.sampled is None else args.sampled, args.samples)
    written = token_sequences(training_documents(), loaded.tokenizer, args.seq_len, args.samples - sampled)
    return interleave(written, sample_sequences(loaded, sampled, args.seq_len, seed=args.seed))


def _load_model(model: str, max_seq_len: int):
    from gemma_edge.model import load
    from gemma_edge.model.bundled import resolve_model_path

    loaded = load(resolve_model_path(model), max_seq_len=max_seq_len)
    if loaded.tokenizer is None:
        raise GemmaEdgeError(f"{loaded.source}: no tokenizer.model; calibration needs the tokenizer")
    return loaded


def cmd_calibrate(args: argparse.Namespace) -> None:
    from gemma_edge.calibration.observers import collect_stats
    from gemma_edge.model.atomic import check_output_path

    check_output_path(args.out, [args.model, *args.calib], args.overwrite)
    loaded = _load_model(args.model, args.seq_len)
    stats = collect_stats(loaded.model, _calibration_sequences(args, loaded))
    out = stats.save(args.out, overwrite=args.overwrite)
    print(f"wrote {out}/stats.json and importance.safetensors ({stats.num_sequences} sequences x {stats.seq_len} tokens)")


def cmd_quantize(args: argparse.Namespace) -> None:
    from gemma_edge.calibration.recipe import QuantRecipe
    from gemma_edge.pipeline.build import Calibration, quantize

    recipe = QuantRecipe.load(args.recipe)
    if args.clip:
        recipe = dataclasses.replace(recipe, clip=args.clip)
    if args.rounding or args.stats or args.unweighted:  # a preset's gptq needs the sequences these two lack
        recipe = dataclasses.replace(recipe, rounding=args.rounding or "nearest")
    calibration = Calibration(Path(args.stats) if args.stats else None, tuple(map(Path, args.calib)), args.samples,
                              args.seq_len, data_free=not args.unweighted, seed=args.seed)
    out = quantize(args.model, args.out, recipe, calibration, cache=not args.no_cache, overwrite=args.overwrite)
    size = sum(r["bytes"] for r in json.loads((out / "quant_report.json").read_text()))
    how = "min-max" if recipe.clip == "minmax" else (
        "activation-weighted MSE" + (" (data-free statistics)" if calibration.sampled else "")
        if calibration.weighted else "weight MSE")
    rounding = ", GPTQ rounding" if recipe.rounding == "gptq" else ""
    print(f"wrote {out} ({recipe.name}, clip {how}{rounding}, {size / 2**20:.1f} MiB of weights)")


def _vision_loss(args: argparse.Namespace, model, reference) -> dict | None:
    """The vision tower's own loss when both checkpoints have one (`evaluate.vision_loss`), printed."""
    from gemma_edge.calibration.evaluate import vision_loss
    from gemma_edge.model.image_processing import image_prompt, open_image, settings_for
    from gemma_edge.model.loader import has_vision, load_vision
    from gemma_edge.runtimes.parity import colour_bar_card, describe_images

    if not (has_vision(model.source) and has_vision(reference.source)):
        if args.image:
            raise GemmaEdgeError(f"--image: {model.source} and {reference.source} must both have a vision tower")
        return None
    float_encoder, quantized_encoder = load_vision(reference.source), load_vision(model.source)
    images = [open_image(f) for f in args.image] if args.image else [colour_bar_card()]
    ids, pixels = image_prompt(describe_images(len(images)), images, settings_for(reference.source, float_encoder.config.image_size),
                               reference.tokenizer, float_encoder.config)
    decoder = reference.model  # (its caches were sized for --seq-len; an image prompt may need more)
    if len(ids) > decoder.max_seq_len:
        decoder = _load_model(str(reference.source), len(ids)).model
    loss = vision_loss(decoder, float_encoder, quantized_encoder, ids, pixels)
    print(f"vision tower alone ({loss['images']} images, {loss['soft_tokens']} soft tokens): soft-token relative "
          f"error {loss['soft_token_relative_error']:.4f} (min cosine {loss['soft_token_cosine_min']:.4f}); float "
          f"decoder on the quantized soft tokens: KL {loss['kl_to_float']:.4f}, top-1 agreement "
          f"{loss['top1_agreement']:.2%} over {loss['positions']} positions")
    return {**loss, "images_from": [str(f) for f in args.image] or ["test card"]}


def _eval_texts(args: argparse.Namespace) -> dict[str, str]:
    """Domain -> text: each --text file under its name, else the held-out domains (--domain)."""
    from gemma_edge.calibration.data import held_out_domains, read_texts

    if args.text:
        stems = [Path(f).stem for f in args.text]
        names = [stem if stems.count(stem) == 1 else str(f) for stem, f in zip(stems, args.text)]
        return {name: "\n\n".join(read_texts([f])) for name, f in zip(names, args.text)}
    return held_out_domains(args.domain)


def cmd_eval(args: argparse.Namespace) -> None:
    from gemma_edge.calibration.evaluate import evaluate_domains, plot_weight_errors, weight_errors
    from gemma_edge.model.atomic import atomic_dir, check_output_path

    if args.report:
        check_output_path(args.report, [args.model, args.against], args.overwrite)
    texts = _eval_texts(args)
    model = _load_model(args.model, args.seq_len)
    reference = _load_model(args.against, args.seq_len) if args.against else None
    results = evaluate_domains(model.model, {name: model.tokenizer.encode(text)[:args.tokens]
                                             for name, text in texts.items()},
                               args.seq_len, reference.model if reference else None)
    result = results.pop("all")
    print(f"{'domain':<12} {'tokens':>6} {'perplexity':>10}" + (f" {'float':>8} {'KL(float||q)':>12} {'top-1 agreement':>16}"
                                                               if reference else ""))
    for name, r in [*results.items(), *([("all", result)] if len(results) > 1 else [])]:
        print(f"{name:<12} {r.tokens:>6} {r.perplexity:>10.3f}" + (
            f" {r.reference_perplexity:>8.3f} {r.kl_to_float:>12.4f} {r.top1_agreement:>16.2%}" if reference else ""))
    vision = _vision_loss(args, model, reference) if reference is not None else None
    if args.report:
        with atomic_dir(args.report, overwrite=args.overwrite, inputs=[model.source, args.against]) as tmp:
            report = {"model": str(model.source), "against": str(reference.source) if reference else None,
                      "seq_len": args.seq_len, "tokens_per_domain": args.tokens,
                      "text": [str(t) for t in args.text] or [f"held-out: {', '.join(texts)}"],
                      "domains": {k: r.to_dict() for k, r in results.items()},
                      "result": result.to_dict(), "vision": vision}
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


def _qat_init(args: argparse.Namespace, recipe, progress: bool = True):
    """The student's starting point: a given quantized checkpoint, or what `gemma-edge quantize` makes of
    the teacher with this recipe (by default GPTQ on data-free samples; taken from the build cache when the
    quickstart or a quantize made it already)."""
    import tempfile

    from gemma_edge.calibration.checkpoint import QuantizedCheckpoint
    from gemma_edge.pipeline.build import quantize

    if args.init:
        init = QuantizedCheckpoint.load(args.init)
        if init.recipe.name != recipe.name:
            raise GemmaEdgeError(f"{args.init}: made with recipe {init.recipe.name!r}, not --recipe {recipe.name!r}")
        return init
    with tempfile.TemporaryDirectory(dir=Path(args.out).absolute().parent, prefix=".qat-init-") as tmp:
        return QuantizedCheckpoint.load(quantize(args.model, Path(tmp) / "init", recipe, progress=progress))


def cmd_qat(args: argparse.Namespace) -> None:
    import torch

    from gemma_edge.calibration.qat import QATConfig, load_run, torchrun_processes, train
    from gemma_edge.calibration.recipe import QuantRecipe
    from gemma_edge.model.atomic import check_output_path

    check_output_path(args.out, [args.model, args.init, args.resume, *args.calib], args.overwrite)
    cfg = QATConfig(steps=args.steps, seq_len=args.seq_len, batch=args.batch, lr=args.lr, scale_lr=args.scale_lr, top_k=args.top_k,
                    train_weights=not args.scales_only, train_embedding=args.train_embedding,
                    grad_checkpointing=args.grad_checkpointing, save_every=args.save_every, seed=args.seed)
    if args.calib and args.sampled is not None:
        raise GemmaEdgeError("--sampled applies to the built-in training text; with --data every sequence is cut "
                             "from the given files (drop one of the two)")
    recipe = QuantRecipe.load(args.recipe)
    if recipe.activations != "none":
        raise GemmaEdgeError(f"recipe {recipe.name!r} quantizes activations, which QAT does not simulate; "
                             "use a weight-only recipe such as int4-block32")
    state, run_dir, meta = None, Path(f"{args.out}.qat-state"), {"recipe": recipe.name, "init": args.init}
    if args.resume:
        saved, meta, state = load_run(args.resume)
        for key in ("steps", "seq_len", "batch"):
            if getattr(cfg, key) != getattr(saved, key):
                raise GemmaEdgeError(f"--{key.replace('_', '-')} {getattr(cfg, key)} differs from the resumed run's "
                                     f"{getattr(saved, key)} ({args.resume}); resume with the same settings")
        if meta["recipe"] != recipe.name:
            raise GemmaEdgeError(f"--recipe {recipe.name} differs from the resumed run's {meta['recipe']}")
        cfg, run_dir, args.init = saved, Path(args.resume), meta["init"]
    torch.set_num_threads(args.threads or torch.get_num_threads())
    with torchrun_processes() as procs:
        procs.share(cfg.batch)  # refuse a batch that does not split before loading anything
        init = _qat_init(args, recipe, progress=procs.writes)  # before the teacher: its build loads the model too
        loaded = _load_model(args.model, cfg.seq_len)
        sequences = state["sequences"].tolist() if state is not None else procs.from_writer(
            lambda: _qat_sequences(args, loaded))
        ckpt = train(loaded, init, sequences, cfg, run_dir, resume=state, meta=meta)
        if not procs.writes:
            return
        out = ckpt.save(args.out, overwrite=args.overwrite)
    p = ckpt.provenance
    on = f" in {procs.world} processes" if procs.world > 1 else ""
    print(f"wrote {out} ({recipe.name}, {cfg.steps} QAT steps of {cfg.batch} x {cfg.seq_len} tokens from "
          f"{len(sequences)} sequences{on}; distillation loss {p['first_loss']:.4f} -> {p['final_loss']:.4f}); "
          f"training state in {run_dir}")


def cmd_import_qat(args: argparse.Namespace) -> None:
    from gemma_edge.calibration.grid_import import import_grid
    from gemma_edge.calibration.recipe import QuantRecipe
    from gemma_edge.model.atomic import check_output_path

    recipe = dataclasses.replace(QuantRecipe.load(args.recipe), rounding="nearest")  # the grid is the release's
    check_output_path(args.out, [args.model], args.overwrite)
    ckpt = import_grid(_load_model(args.model, 64), recipe)
    out = ckpt.save(args.out, overwrite=args.overwrite)
    grid = sum(1 for r in ckpt.report if r.get("clip") == "grid")
    print(f"wrote {out} ({recipe.name}; {grid} tensors imported from their int4 grid with exact scales)")


def _calib_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", "--data", nargs="+", default=[], metavar="FILE", dest="calib",
                   help="calibration text (.txt, or .jsonl with a 'text' field); default: sample from the model")
    p.add_argument("--samples", type=positive_int, default=16, help="number of calibration sequences")
    p.add_argument("--seq-len", type=positive_int, default=256, help="tokens per calibration sequence")
    p.add_argument("--seed", type=seed, default=0, help="seed for data-free sampling")


def register(sub) -> None:
    from gemma_edge.calibration.data import DOMAINS

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
                    f"and `gemma_edge.model.load` opens as the quantized reference. Presets: {', '.join(PRESETS)}. "
                    "By default each scale's clip ratio minimises the layer's expected output error, weighted by "
                    "activation statistics the model computes on text it samples itself (data-free, seeded, "
                    "cached per checkpoint); --calib/--data or --stats give it other text, --unweighted the plain "
                    "weight error.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--recipe", required=True, help="a preset name or a recipe JSON file")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--clip", choices=["mse", "minmax"], help="override the recipe's clipping method")
    p.add_argument("--rounding", choices=["nearest", "gptq"],
                   help="override the recipe's rounding. The integer presets use gptq: the projections and the "
                   "LM head (a table shared with the lookup too) are re-rounded with error feedback from the "
                   "calibration activations (docs/quantization.md); it needs calibration sequences, so with "
                   "--stats or --unweighted rounding is nearest")
    p.add_argument("--stats", help="calibration folder from `gemma-edge calibrate` (activation-weighted search)")
    p.add_argument("--unweighted", action="store_true",
                   help="weigh every input feature alike in the clip search (no calibration statistics)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_cache_option(p)
    _calib_options(p)

    p = add_command(sub, "eval", cmd_eval, "perplexity, KL and top-1 agreement against the float model",
                    "Teacher-forced evaluation on held-out text, one row per domain: perplexity of MODEL; with "
                    "--against FLOAT_MODEL also KL(float||model), top-1 agreement, and a per-layer weight-error "
                    "table and plot (--report). Default text: seven domains that need no download and that "
                    "calibration and QAT never read (English prose, chat turns in Gemma's template, Python "
                    "source, the Python language reference, German, French, Chinese; "
                    "calibration/heldout/README.md). For a multimodal (4B+) checkpoint, also the vision tower's own loss: "
                    "soft-token error and the float decoder's KL when fed the quantized tower's soft tokens.")
    p.add_argument("model", help=MODEL_HELP + ", or a quantized checkpoint folder")
    p.add_argument("--against", help="the float model to compare with")
    p.add_argument("--text", nargs="+", default=[], metavar="FILE",
                   help="held-out text files, one domain each (instead of the built-in domains)")
    p.add_argument("--domain", nargs="+", default=list(DOMAINS), choices=DOMAINS, metavar="NAME",
                   help=f"built-in domains to evaluate (default all: {', '.join(DOMAINS)})")
    p.add_argument("--tokens", type=positive_int, default=2048, help="at most this many tokens of each domain")
    p.add_argument("--seq-len", type=positive_int, default=512, help="evaluation window")
    p.add_argument("--report", help="folder for eval.json and weight_errors.png (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --report if it exists")
    p.add_argument("--image", nargs="+", default=[], metavar="FILE",
                   help="multimodal checkpoints: images for the vision tower's own loss (default: a test card)")


def register_qat(sub) -> None:
    from gemma_edge.calibration.qat import QATConfig

    d = QATConfig()
    p = add_command(sub, "qat", cmd_qat, "quantization-aware training: learn scales and weights by distillation",
                    "Start from what `gemma-edge quantize` makes with --recipe (GPTQ on data-free samples for the "
                    "integer presets; reused from the build cache) or from --init, and train LSQ scales and latent "
                    "weights with a straight-through estimator to minimise KL(float || quantized) on next-token "
                    "distributions (the float model's top-k logits renormalised, or --top-k 0 for the full "
                    "vocabulary). Writes a QuantizedCheckpoint "
                    "that the exporters consume unchanged, and the training state to OUT.qat-state every "
                    "--save-every steps; --resume continues from it bit for bit. "
                    "Scale out with `torchrun --nproc-per-node N --no-python gemma-edge qat ... --batch B`: each "
                    "process trains B/N of every step's sequences and gradients are averaged (gloo, on the CPU).")
    p.add_argument("model", help=MODEL_HELP + " (the float teacher)")
    p.add_argument("--recipe", required=True, help="a weight-only preset name or a recipe JSON file")
    p.add_argument("--steps", type=positive_int, default=d.steps, help="training steps, --batch sequences each")
    p.add_argument("--batch", type=positive_int, default=d.batch,
                   help="sequences per step, split over the processes of a torchrun launch (a multiple of them)")
    p.add_argument("--out", required=True, help="output QuantizedCheckpoint folder (written atomically)")
    p.add_argument("--data", dest="calib", nargs="+", default=[], metavar="FILE",
                   help="training text (.txt, or .jsonl with a 'text' field); default: the built-in English prose, chat "
                        "turns and Python code that the held-out domains of `gemma-edge eval` never share, "
                        "interleaved with --sampled sequences the model writes in several languages")
    p.add_argument("--sequences", dest="samples", type=positive_int, default=256, help="training sequences to cut")
    p.add_argument("--sampled", type=non_negative_int, default=None, metavar="N",
                   help="without --data: how many of the --sequences the float model writes from multilingual "
                        "requests (data-free, temperature 1; about 6 s each at 270M); default: half")
    p.add_argument("--seq-len", type=positive_int, default=d.seq_len, help="tokens per training sequence")
    p.add_argument("--resume", metavar="DIR", help="an OUT.qat-state folder of an interrupted run")
    p.add_argument("--init", metavar="DIR", help="start from this quantized checkpoint instead of the default PTQ "
                   "(e.g. one from `gemma-edge import-qat`)")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="Adam learning rate of the latent weights")
    p.add_argument("--scale-lr", type=non_negative_float, default=d.scale_lr, help="Adam learning rate of the log-scales")
    p.add_argument("--top-k", type=non_negative_int, default=d.top_k, help="teacher logits kept per position; 0 = full vocabulary")
    p.add_argument("--scales-only", action="store_true", help="train only the scales, keep the float weights")
    p.add_argument("--train-embedding", action="store_true",
                   help="also train the lookup table when it is not the LM head's")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute layers in backward to save memory")
    p.add_argument("--save-every", type=positive_int, default=d.save_every, help="steps between saved training states")
    p.add_argument("--seed", type=seed, default=d.seed, help="data order seed")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--overwrite", action="store_true")

    p = add_command(sub, "import-qat", cmd_import_qat, "import a checkpoint trained onto an int4 block grid",
                    "Import Google's '-qat-q4_0-unquantized' style checkpoints: weights trained so that Q4_0 "
                    "stores them without loss. Each int4 block's scale is recovered exactly (largest-magnitude "
                    "weight / -8) and every weight is checked to lie on the grid; a checkpoint that does not is "
                    "refused. Tensors the recipe gives other formats are quantized as `quantize` would.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--recipe", default="int4-block32", help="a preset name or recipe JSON file")
    p.add_argument("--out", required=True, help="output QuantizedCheckpoint folder (written atomically)")
    p.add_argument("--overwrite", action="store_true")

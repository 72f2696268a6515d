"""`gemma-edge parity` and `gemma-edge quickstart`: prove an artifact matches, or run the whole pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_cache_option, add_command, add_verify_option


def cmd_parity(args: argparse.Namespace) -> int:
    from gemma_edge.pipeline.build import parity
    from gemma_edge.runtimes.parity import prompts_from_file, write_report

    prompts = None
    if args.prompts:
        from gemma_edge.model import Tokenizer

        prompts = prompts_from_file(args.prompts, Tokenizer.from_file(Path(args.artifact) / "tokenizer.model"))
    image_prompts = None
    if args.image:
        from gemma_edge.model.image_processing import open_image
        from gemma_edge.runtimes.parity import describe_images, image_prompt_for

        text = args.image_prompt or describe_images(len(args.image))
        image_prompts = [image_prompt_for(args.artifact, text, [open_image(f) for f in args.image],
                                          pan_and_scan=args.pan_and_scan,
                                          name=f"image prompt ({', '.join(Path(f).name for f in args.image)})")]
    report = parity(args.artifact, against=args.against, prompts=prompts, source=args.source,
                    image_prompts=image_prompts, cache=not args.no_cache, verify=not args.no_verify)
    print(report.to_markdown())
    if args.report:
        print(f"wrote {write_report(report, args.report)}")
    return 0 if report.passed else 1


def register(sub) -> None:
    p = add_command(sub, "parity", cmd_parity, "check an exported artifact against its reference",
                    "Teacher-forced at every position (max |dlogit|, min cosine, top-1/top-5 agreement, "
                    "KL(ref||artifact), perplexity of each) and free-running greedy (tokens until the first "
                    "divergence; the runtime's own loop must print the same tokens) on three short prompts and "
                    "a passage longer than the sliding window, plus an image+text prompt for a multimodal "
                    "artifact (ExecuTorch's MultimodalRunner, genai's gemma3 pipeline). --against quantized (default) checks export "
                    "fidelity against the model the artifact came from, built as the artifact computes; "
                    "--against float measures what the recipe costs. Thresholds: "
                    "gemma_edge/runtimes/parity/thresholds.json. Exit 1 when any threshold fails, 2 on bad input.")
    p.add_argument("artifact", help="folder written by gemma-edge export (model.pte or model.onnx)")
    p.add_argument("--against", choices=["quantized", "float"], default="quantized")
    p.add_argument("--prompts", help="JSON list of prompt strings (default: built-in prompts)")
    p.add_argument("--source", help="reference checkpoint (default: the path recorded at export)")
    p.add_argument("--report", help="folder for parity.json and parity.md")
    p.add_argument("--image", nargs="+", metavar="FILE",
                   help="multimodal artifacts: check an image+text prompt on these images instead of the "
                        "built-in test card (the vision encoder, the image mask and the text after it)")
    p.add_argument("--image-prompt", metavar="TEXT",
                   help="text of that prompt; each <start_of_image> marks an image (default: describe them)")
    p.add_argument("--pan-and-scan", action="store_true", help="also feed crops of elongated images")
    add_cache_option(p)
    add_verify_option(p)

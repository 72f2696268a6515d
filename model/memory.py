"""Giving freed memory back to the system, for stages that free a large part of what they held."""

from __future__ import annotations

import contextlib
import ctypes
import functools
from typing import Iterator


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (which has `malloc_trim` and `mallopt`); None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim`; nothing elsewhere). Tensors
    below glibc's mmap threshold (raised up to 32 MiB as large blocks are freed) live in the heap, and once
    freed their pages stay with this process: a freed model's weights, a long prompt's activations."""
    if _glibc() is not None:
        _glibc().malloc_trim(0)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
DYNAMIC_CEILING = 32 << 20  # the largest threshold glibc's own adjustment reaches on 64-bit


@contextlib.contextmanager
def large_allocations_mapped(threshold: int = 4 << 20) -> Iterator[None]:
    """Within this block every allocation of `threshold` bytes or more gets pages of its own, returned to
    the system when freed. glibc otherwise raises its threshold as large blocks are freed (up to 32 MiB), and
    blocks below it are carved from the heap, whose freed pages stay with the process: ExecuTorch's lowering
    of the 4B peaked 14.1 GiB that way, 10.1 with this (same .pte, same time). Afterwards the threshold stays
    fixed at glibc's dynamic ceiling (setting it ends glibc's adjustment for the process)."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, DYNAMIC_CEILING)

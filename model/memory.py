"""Giving freed memory back to the system, for stages that free a large part of what they held."""

from __future__ import annotations

import ctypes


def return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim`; nothing elsewhere). Tensors
    below glibc's mmap threshold (raised up to 32 MiB as large blocks are freed) live in the heap, and once
    freed their pages stay with this process: a freed model's weights, a long prompt's activations."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

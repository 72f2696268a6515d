"""Where a pipeline stage runs: in this process, or in a fresh one that hands its memory back when done."""

from __future__ import annotations

from typing import Any, Callable


def in_this_process(fn: Callable[..., Any], /, *args, **kwargs) -> Any:
    return fn(*args, **kwargs)


def in_fresh_process(fn: Callable[..., Any], /, *args, **kwargs) -> Any:
    """`fn(*args, **kwargs)` in a fresh (spawned) Python process, its result (or error) sent back. What the
    stage allocated goes back to the OS when it returns: `gemma-edge quickstart` ran its stages in one
    process and peaked at 6.0 GB, each stage leaving the fragments of its allocator to the next (measured;
    docs/scale.md). `fn` must be importable by name (a module-level function) and its arguments picklable."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()

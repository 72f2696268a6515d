"""The one way a stage replaces submodules of a model (quantized linears, fake-quant, runtime-friendly ops)."""

from __future__ import annotations

from typing import Callable

from torch import nn


def swap_modules(root: nn.Module, replace: Callable[[str, nn.Module], nn.Module | None]) -> None:
    """Put `replace(name, module)` in place of every submodule for which it returns one; `name` as in
    `named_modules` (pre-order), a replaced module's own children are not visited."""
    replaced: list[str] = []
    for name, module in list(root.named_modules()):
        if not name or any(name.startswith(p + ".") for p in replaced):
            continue
        new = replace(name, module)
        if new is not None:
            root.set_submodule(name, new)
            replaced.append(name)

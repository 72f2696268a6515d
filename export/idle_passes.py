"""ExecuTorch lowering passes that have nothing to rewrite in a graph, skipped.

An `ExportPass` re-runs every node of the graph it is given (and of each `cond` branch) under fake tensors
with symbolic shapes, whether or not it rewrites anything: 4-7 s a pass on the real 270M, where all ten passes
of `HAS_WORK` rewrite nothing (export 164 -> 118 s; docs/executorch.md). Within `skipping_idle_passes()` each
of them first asks its own trigger, read off its source in ExecuTorch 1.5.1, and is skipped when no node of
the graph or of its submodules matches. The triggers are conservative: a node they cannot judge runs the
pass. The tests check that the program is the one the full pass list gives, byte for byte (float, int4 with
int8 activations, the shared int4 table, a vision tower), and that each trigger fires on the ops it rewrites.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import SymBool, SymFloat, SymInt

aten = torch.ops.aten


def _nodes(gm: torch.fx.GraphModule) -> Iterable[torch.fx.Node]:
    for module in gm.modules():
        if isinstance(module, torch.fx.GraphModule):
            yield from module.graph.nodes


def _op(node: torch.fx.Node) -> torch._ops.OpOverload | None:
    """The ATen overload a call runs (an edge op unwrapped), or None for other calls and nodes."""
    from executorch.exir.dialects.edge._ops import EdgeOpOverload

    if node.op != "call_function":
        return None
    target = node.target._op if isinstance(node.target, EdgeOpOverload) else node.target
    return target if isinstance(target, torch._ops.OpOverload) else None


def _schema_values(node: torch.fx.Node, op: torch._ops.OpOverload) -> Iterator[tuple[torch.Argument, object]]:
    """(schema argument, value) pairs as `executorch.exir.pass_base.map_args` binds them."""
    for i, schema in enumerate(op._schema.arguments):
        if schema.name in node.kwargs:
            yield schema, node.kwargs[schema.name]
        elif not schema.kwarg_only and i < len(node.args):
            yield schema, node.args[i]


def _val(value: object) -> object:
    return value.meta.get("val") if isinstance(value, torch.fx.Node) else value


def _transposes(node: torch.fx.Node) -> bool:  # NormalizeTransposePass: aten.t -> aten.t_copy
    return _op(node) == aten.t.default


def _views(node: torch.fx.Node) -> bool:  # ReplaceBrokenOpsWithFunctionalOpsPass: a view -> its _copy
    op = _op(node)
    return op is not None and op.is_view


def _symbol_for_a_tensor(node: torch.fx.Node) -> bool:  # SymToTensorPass: inserts scalar_tensor
    op = _op(node)
    return op is not None and any(isinstance(schema.type, torch.TensorType)
                                  and isinstance(_val(value), (SymInt, SymFloat, SymBool))
                                  for schema, value in _schema_values(node, op))


_PROMOTING = {aten.add.Tensor: "DEFAULT", aten.mul.Tensor: "DEFAULT", aten.sub.Tensor: "DEFAULT",
              aten.div.Tensor: "INT_TO_FLOAT", aten.div.Tensor_mode: "DEFAULT", aten.minimum.default: "DEFAULT"}


def _mixed_types(node: torch.fx.Node) -> bool:  # RemoveMixedTypeOperators: _to_copy to the promoted dtype
    from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND, elementwise_dtypes

    op = _op(node)
    if op not in _PROMOTING or len(node.args) <= 1:
        return False
    kind = _PROMOTING[op]
    if op == aten.div.Tensor_mode and node.kwargs.get("rounding_mode") is None:
        kind = "INT_TO_FLOAT"
    operands = []
    for arg in node.args:
        val = _val(arg)
        if isinstance(val, (SymInt, SymFloat, SymBool)):
            val = torch.tensor({SymInt: 0, SymFloat: 0.0, SymBool: False}[type(val)])
        if not isinstance(val, torch.Tensor):
            return True  # not judged here: run the pass
        operands.append(val)
    promoted = elementwise_dtypes(*operands, type_promotion_kind=getattr(ELEMENTWISE_TYPE_PROMOTION_KIND, kind))[1]
    return any(isinstance(schema.type, torch.TensorType) and getattr(_val(value), "dtype", promoted) != promoted
               for schema, value in _schema_values(node, op))


def _matmuls(node: torch.fx.Node) -> bool:  # XNNPACK's ConvertToLinearPass: [add]mm / bmm -> linear
    return _op(node) in (aten.mm.default, aten.addmm.default, aten.bmm.default)


def _tagged_quant_parent(node: torch.fx.Node) -> bool:  # XNNPACK's PropagateCustomMetaPass
    from executorch.backends.xnnpack.utils.quant_utils import is_dequant, is_quant

    if node.op != "call_function" or not (is_quant(node) or is_dequant(node)) or not node.args:
        return False
    return isinstance(node.args[0], torch.fx.Node) and "custom" in node.args[0].meta


def _constant_inputs(node: torch.fx.Node) -> bool:  # ConstPropPass: folds a call on constants only
    def constant(arg: torch.fx.Node) -> bool:  # ExportPass hands a lifted constant's real tensor to the pass
        return arg.op == "get_attr" or getattr(arg.meta.get("val"), "constant", None) is not None

    return _op(node) is not None and all(constant(arg) for arg in node.all_input_nodes)


def _to_copies(node: torch.fx.Node) -> bool:  # XNNPACK's RemoveRedundantCopyPass
    return _op(node) == aten._to_copy.default


def _dim_order_ops(node: torch.fx.Node) -> bool:  # DimOrderOpsRevertPass: dim-order ops -> memory-format ops
    from executorch.exir.passes.dim_order_ops_registry import MemoryFormatOpsMap

    return node.op == "call_function" and node.target in MemoryFormatOpsMap


def _default_layout_ops(node: torch.fx.Node) -> bool:  # LegalizePortableDimOrderPass: a contiguous copy first
    from executorch.exir.passes.legalize_portable_dim_order_pass import LegalizePortableDimOrderPass

    return node.op == "call_function" and node.target in LegalizePortableDimOrderPass._target_ops


HAS_WORK: dict[str, Callable[[torch.fx.Node], bool]] = {
    "NormalizeTransposePass": _transposes,
    "ReplaceBrokenOpsWithFunctionalOpsPass": _views,
    "SymToTensorPass": _symbol_for_a_tensor,
    "RemoveMixedTypeOperators": _mixed_types,
    "ConvertToLinearPass": _matmuls,
    "PropagateCustomMetaPass": _tagged_quant_parent,
    "ConstPropPass": _constant_inputs,
    "RemoveRedundantCopyPass": _to_copies,
    "DimOrderOpsRevertPass": _dim_order_ops,
    "LegalizePortableDimOrderPass": _default_layout_ops,
}


def idle(pass_name: str, gm: torch.fx.GraphModule) -> bool:
    """Whether the pass called `pass_name` has nothing to rewrite in `gm` (False for passes not in HAS_WORK)."""
    has_work = HAS_WORK.get(pass_name)
    return has_work is not None and not any(has_work(node) for node in _nodes(gm))


@contextlib.contextmanager
def skipping_idle_passes() -> Iterator[None]:
    """Within this block a pass of `HAS_WORK` that is idle on its graph returns the graph unchanged."""
    from torch.fx.passes.infra.pass_base import PassBase, PassResult

    original = PassBase.__call__

    def call(self, graph_module):
        if idle(type(self).__name__, graph_module):
            return PassResult(graph_module, False)
        return original(self, graph_module)

    PassBase.__call__ = call
    try:
        yield
    finally:
        PassBase.__call__ = original

"""ExecuTorch export: the reference decoder with its caches on ExecuTorch's fused LLM ops, lowered to XNNPACK.

The graph is the reference `Gemma` module with each layer's cache swapped for one built on
`llama::update_cache` / `llama::update_cache_with_indices` and `llama::custom_sdpa` (layout
[batch, seq, heads, dim]). The masks come from the same functions the reference uses
(`attention_mask`, `ring_key_positions`), so sliding-window semantics are defined once:
- global layers: a full-length cache, causal `custom_sdpa` from `start_pos`;
- sliding layers: a ring of `window` slots; the new keys go to slot `pos % window` (later positions win), so
  one prefill may be longer than the window. A call of several tokens reads [new keys ++ ring before the
  call] with an explicit mask, cut after the filled slots until the ring wraps (`masked_ring_attention`); a
  one-token call reads the updated ring in place, causally (`one_token_attention`; a `torch.cond`).
The method takes `tokens [1, T]` and `input_pos [1]` (the start position), T dynamic up to
`max_seq_len`, and returns the last position's logits [1, vocab] — the stock runner reads only those.
A multimodal checkpoint gives instead the three methods of ExecuTorch's MultimodalRunner
(`vision_encoder`, `token_embedding`, `text_decoder`, see `pte_methods` and docs/vision.md).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge.model.atomic import check_output_path
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.gemma import (Gemma, RMSNorm, as_dtype, attention_mask, full_cache_key_groups, gelu_tanh_explicit,
                                    image_groups, register_kv, ring_key_groups, ring_key_positions, rotate_half)
from gemma_edge.model.memory import large_allocations_mapped
from gemma_edge.model.swap import swap_modules
from gemma_edge.model.tokenizer import Tokenizer
from gemma_edge.model.vision import VisionEncoder

from .idle_passes import skipping_idle_passes
from .manifest import vision_metadata, write_artifact


def _load_custom_ops() -> None:
    try:
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  registers llama::*
    except ImportError as e:
        raise GemmaEdgeError(f"ExecuTorch is not installed ({e}); run: pip install 'gemma-edge[export]'") from None


class ETFullCache(nn.Module):
    def __init__(self, num_kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        self.max_seq_len = max_seq_len
        register_kv(self, (1, max_seq_len, num_kv_heads, head_dim), dtype)  # [batch, seq, heads, dim]

    def attend(self, q, k, v, input_pos, scale: float, groups: torch.Tensor | None = None):
        """q, k, v and the result in [B, T, heads, D], the fused ops' layout."""
        start = torch.ops.aten._local_scalar_dense(input_pos[0])  # .item(), as ExecuTorch would decompose it
        torch._check(start >= 0)
        torch._check(start < self.max_seq_len)
        torch.ops.llama.update_cache(k, self.k, start)
        torch.ops.llama.update_cache(v, self.v, start)
        if groups is None:  # text only: the kernel's causal path reads just the first start + T keys
            out = torch.ops.llama.custom_sdpa(q, self.k, self.v, start, None, 0.0, True, scale)
        else:  # image soft tokens: an explicit mask over the whole cache (the kernel then reads every slot)
            key_pos = torch.arange(self.max_seq_len)
            key_group = full_cache_key_groups(groups, input_pos, self.max_seq_len)
            out = torch.ops.llama.custom_sdpa(q, self.k, self.v, 0, _float_mask(
                attention_mask(input_pos, key_pos, None, groups, key_group)), 0.0, False, scale)
        return out


def _float_mask(allowed: torch.Tensor) -> torch.Tensor:
    """custom_sdpa takes an additive float mask."""
    return torch.where(allowed, torch.full((), 0.0), torch.full((), float("-inf")))


def call_positions(input_pos: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """input_pos[0] + arange(T) for a call of T positions (dim 1 of `tokens`). Spelled as the ops ExecuTorch's
    decomposition table leaves alone (`arange(0, T, 1)`, and below `_local_scalar_dense` for `.item()`,
    `full` for `zeros`; `logical_and` in the masks): a program holding none of its ops is not decomposed a
    second time by `to_edge_transform_and_lower` (`unfiltered_when_nothing_to_filter`)."""
    return input_pos[0] + torch.arange(0, tokens.shape[1], 1)


class RingMask:
    """What every sliding layer of a call reads, computed once per call by `PteDecoder` / `PteTextDecoder`
    (rebuilt in every layer it cost 15-30 portable ops per layer): the mask over [new keys ++ ring before the
    call], the slots the new keys go to, and whether the call is one token."""

    def __init__(self, window: int):
        self.window = window
        self.mask: torch.Tensor | None = None
        self.slots: torch.Tensor | None = None
        self.one_token: torch.Tensor | None = None

    def compute(self, input_pos: torch.Tensor, groups: torch.Tensor | None = None) -> None:
        key_pos = torch.cat((ring_key_positions(input_pos[0], self.window), input_pos))
        key_group = None if groups is None else ring_key_groups(groups, self.window)
        mask = attention_mask(input_pos, key_pos, self.window, groups, key_group)
        self.mask = _float_mask(torch.cat((mask[:, self.window:], mask[:, :self.window]), dim=1))  # new keys first
        self.slots = (input_pos % self.window)[None, :]  # later positions overwrite earlier ones
        self.one_token = input_pos[-1] == input_pos[0]


def masked_ring_attention(q, keys, values, mask, input_pos, scale: float):
    """A call of several tokens: attention over [new keys ++ ring before the call] with `RingMask`'s mask,
    cut after the filled slots.

    With a mask custom_sdpa reads every key it is given, so a 256-token call on an empty ring worked through
    768 keys, 512 of them masked. Before the ring wraps only slots 0..start-1 hold keys: read [new keys ++ ring]
    cut after those slots (a prefix: XNNPACK keeps the `cat`; a `cat` of a slice with an unbacked length left
    it to the portable kernels, twice per layer per step). At least one slot (masked when empty): ExecuTorch's
    dim-order check fails on a length that may be 0."""
    torch._check(values.shape[1] == keys.shape[1])  # inside a `cond` branch each size is a fresh symbol
    window = keys.shape[1] - q.shape[1]
    start = torch.ops.aten._local_scalar_dense(input_pos[0])
    torch._check(start >= 0)
    n = q.shape[1] + torch.sym_max(1, torch.sym_min(start, window))
    return torch.ops.llama.custom_sdpa(q, keys[:, :n], values[:, :n], 0, mask[:, :n], 0.0, False, scale)


def one_token_attention(q, ring_k, ring_v, input_pos, scale: float):
    """A one-token call, after its key went into slot `pos % window`: the ring holds exactly the position's
    window once it has wrapped, slots 0..pos before. Causal from min(pos, window - 1) reads those slots and no
    others — no copy of the ring, no mask."""
    start = torch.ops.aten._local_scalar_dense(input_pos[0])
    torch._check(start >= 0)
    return torch.ops.llama.custom_sdpa(q, ring_k, ring_v, torch.sym_min(start, ring_k.shape[1] - 1), None, 0.0,
                                       True, scale)


class ETRingCache(nn.Module):
    def __init__(self, num_kv_heads: int, window: int, head_dim: int, dtype: torch.dtype, shared: RingMask):
        super().__init__()
        self.window = window
        self.shared = shared
        register_kv(self, (1, window, num_kv_heads, head_dim), dtype)

    def attend(self, q, k, v, input_pos, scale: float, groups: torch.Tensor | None = None):
        """q, k, v and the result in [B, T, heads, D], the fused ops' layout.

        A `cond` on the call's length: a decode step reads the updated ring in place, where the cut of
        [new keys ++ ring] and the mask cost 0.76 of 9.8 ms per step. Its operands have backed sizes only
        (ExecuTorch's passes lose an unbacked size across a `cond`, and so does a `cond`'s own output): the cut
        happens inside the branch, and the copy before the update is made whatever the length."""
        keys, values = torch.cat((k, self.k), dim=1), torch.cat((v, self.v), dim=1)
        torch.ops.llama.update_cache_with_indices(k, self.k, 0, self.shared.slots)
        torch.ops.llama.update_cache_with_indices(v, self.v, 0, self.shared.slots)
        return torch.cond(
            self.shared.one_token,
            lambda q, ring_k, ring_v, keys, values, mask, pos: one_token_attention(q, ring_k, ring_v, pos, scale),
            lambda q, ring_k, ring_v, keys, values, mask, pos: masked_ring_attention(q, keys, values, mask, pos,
                                                                                      scale),
            (q, self.k, self.v, keys, values, self.shared.mask, input_pos))


class LinearMeanRMSNorm(RMSNorm):
    """Gemma's RMSNorm with the mean of squares written as a linear layer (weights 1/dim): XNNPACK takes
    linears of any rank and length, but `mean` only over 4-D inner dims, so every norm's `mean` ran in the
    portable kernels and split each layer into several delegates."""

    def __init__(self, norm: RMSNorm):
        super().__init__(norm.weight.shape[0], norm.eps)
        dim = norm.weight.shape[0]
        self.register_buffer("mean_weight", torch.full((1, dim), 1.0 / dim), persistent=False)
        self.register_buffer("eps_bias", torch.full((1,), norm.eps), persistent=False)  # + eps inside the linear
        self.register_buffer("scale", 1.0 + norm.weight.detach().float(), persistent=False)  # the (1 + w), once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = as_dtype(x, torch.float32)
        xf = xf * torch.rsqrt(F.linear(xf * xf, self.mean_weight, self.eps_bias))
        return as_dtype(xf * self.scale, x.dtype)


class RotateHalfByMatmul(nn.Module):
    """`rotate_half` as a product with a signed permutation matrix: exact (one non-zero term per output)
    and a linear XNNPACK takes, where slicing a dynamic-length tensor in halves is not lowered."""

    def __init__(self, head_dim: int):
        super().__init__()
        r = rotate_half(torch.eye(head_dim))  # row i: rotate_half of the i-th unit vector
        self.register_buffer("weight", r.t().contiguous(), persistent=False)  # F.linear(x, W) = x @ W.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def _copy_sharing_tensors(module: nn.Module) -> nn.Module:
    """A copy of `module`'s structure whose parameters and buffers are the original's tensors: the swaps
    below replace modules, never a weight in place, and a copy of the weights (1 GB of integers at 1B)
    would only add to the export's peak."""
    shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, shared)


def on_et_caches(model: Gemma) -> tuple[Gemma, RingMask]:
    """A copy of `model` whose caches run on ExecuTorch's fused ops, spelled so that XNNPACK takes all of a
    layer between two attention calls (activation, norms, RoPE rotation); the ring mask its sliding layers
    share."""
    _load_custom_ops()
    model = _copy_sharing_tensors(model)
    c = model.config
    ring = RingMask(c.sliding_window)
    swap_modules(model, lambda name, module: LinearMeanRMSNorm(module) if type(module) is RMSNorm else None)
    for layer in model.layers:
        layer.mlp.act = gelu_tanh_explicit  # XNNPACK would lower aten.gelu as the erf GELU
        attn = layer.self_attn
        attn.rotate = RotateHalfByMatmul(c.head_dim)
        dtype = layer.input_layernorm.weight.dtype  # activations (the linears may be integer)
        attn.cache = (ETRingCache(c.num_kv_heads, c.sliding_window, c.head_dim, dtype, ring) if attn.window
                      else ETFullCache(c.num_kv_heads, model.max_seq_len, c.head_dim, dtype))
    return model, ring


class PteDecoder(nn.Module):
    """forward(tokens [1, T], input_pos [1]) -> logits [1, vocab] of the last position."""

    def __init__(self, model: Gemma):
        super().__init__()
        self.model, self.ring = on_et_caches(model)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        positions = call_positions(input_pos, tokens)
        self.ring.compute(positions)
        return self.model(tokens, positions, last_logits_only=True)[:, -1, :]


def runner_metadata(model: Gemma, stop_ids: tuple[int, ...], prefill_chunk: int | None = None) -> dict:
    """Constant methods ExecuTorch's LLM runner (and Android's LlmModule) read from the .pte: the longest
    call (`get_max_seq_len`; the runner splits longer prompts) and the KV cache (`get_max_context_len`)."""
    c = model.config
    return {
        "get_max_seq_len": prefill_chunk or model.max_seq_len,
        "get_max_context_len": model.max_seq_len,
        "get_vocab_size": c.vocab_size,
        "get_n_layers": c.num_layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_bos_id": c.bos_token_id,
        "get_eos_ids": list(stop_ids),
    }


class PteTokenEmbedding(nn.Module):
    """token_embedding(tokens [1, T]) -> [1, T, hidden + 1]: scaled embeddings and a 0 flag channel."""

    def __init__(self, model: Gemma):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.model.embed(tokens)
        return torch.cat((x, torch.zeros_like(x[..., :1])), dim=-1)


def fused_bidirectional_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SigLIP's attention (q, k, v [N, heads, patches, head_dim], every patch sees every patch) on ExecuTorch's
    fused `custom_sdpa`, which works through the keys in tiles: written out, the 16 × 4,096 × 4,096 scores
    and their softmax went into the method's planned memory, 3.1 GB that a 4B multimodal .pte allocates
    when it loads."""
    out = torch.ops.llama.custom_sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0, None, 0.0, False,
                                      None)
    return out.transpose(1, 2)


class PteVisionEncoder(nn.Module):
    """vision_encoder(pixels [1, 3, S, S], normalised) -> [1, tokens per image, hidden + 1]: the image's soft
    tokens and a 1 flag channel, which tells `text_decoder` to let them attend to each other."""

    def __init__(self, encoder: VisionEncoder):
        super().__init__()
        self.encoder = _copy_sharing_tensors(encoder)
        for layer in self.encoder.vision_tower.encoder.layers:
            layer.mlp.act = gelu_tanh_explicit
            layer.self_attn.attend = fused_bidirectional_attention

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.encoder(pixels)
        return torch.cat((x, torch.ones_like(x[..., :1])), dim=-1)


class PteTextDecoder(nn.Module):
    """text_decoder(embeds [1, T, hidden + 1], input_pos [1]) -> logits [1, vocab] of the last position.

    ExecuTorch's MultimodalRunner feeds it one input at a time — token_embedding's output for text,
    vision_encoder's for an image — so the flag channel is how the decoder knows which positions are
    image soft tokens and must see each other (Gemma 3's bidirectional image attention)."""

    def __init__(self, model: Gemma):
        super().__init__()
        self.model, self.ring = on_et_caches(model)

    def forward(self, embeds: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        positions = call_positions(input_pos, embeds)
        groups = image_groups(embeds[0, :, -1] > 0.5)
        self.ring.compute(positions, groups)
        x = self.model.hidden(embeds[..., :-1], positions, groups)
        return self.model.logits(x[:, -1:])[:, -1, :]


def pte_methods(model: Gemma, vision: VisionEncoder | None = None, prefill_chunk: int | None = None) -> dict:
    """name -> (module, example inputs, dynamic shapes): `forward` for a text model; the three methods of
    ExecuTorch's MultimodalRunner (`vision_encoder`, `token_embedding`, `text_decoder`) with a vision tower.
    One call takes at most `prefill_chunk` tokens (default: the whole cache); the memory plan is sized for it."""
    seq = torch.export.Dim("seq_len", min=1, max=prefill_chunk or model.max_seq_len)
    tokens, start = torch.tensor([[2, 3]], dtype=torch.long), torch.tensor([0], dtype=torch.long)
    if vision is None:
        return {"forward": (PteDecoder(model), (tokens, start), ({1: seq}, None))}
    c = vision.config
    pixels = torch.zeros(1, c.num_channels, c.image_size, c.image_size)
    embeds = torch.zeros(1, 2, model.config.hidden_size + 1)
    return {
        "vision_encoder": (PteVisionEncoder(vision), (pixels,), None),
        "token_embedding": (PteTokenEmbedding(model), (tokens,), ({1: seq},)),
        "text_decoder": (PteTextDecoder(model), (embeds, start), ({1: seq}, None)),
    }


# The XNNPACK delegate's own passes that a text decoder's graph needs. The others rewrite ops it does not
# contain (upsampling, batch norm, convolutions, PReLU, max-pool indices, padding, SDPA patterns, ReLU
# fusion, long concatenations) yet each still re-runs every node of every delegate with symbolic shapes:
# skipping them cut a tiny model's export by about 40% with the same program semantics (tests/
# test_executorch_tiny.py checks the logits). Graphs with a vision tower keep them all.
DECODER_XNNPACK_PASSES = ("XNNPACKRemoveCloneOpsTransform", "DimOrderOpsRevertPass", "ConvertToLinearPass",
                          "PropagateCustomMetaPass", "ConstPropPass", "ChannelsLastTaggedReshapePass",
                          "RemoveRedundantCopyPass")


@contextlib.contextmanager
def decoder_xnnpack_passes() -> Iterator[None]:
    """Within this block, XNNPACK's preprocess runs only `DECODER_XNNPACK_PASSES` (in their usual order)."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    original = XNNPACKPassManager.__init__

    def init(self, exported_program, passes=None):
        original(self, exported_program, passes)
        if not passes:
            self.passes = [p for p in self.passes if p.__name__ in DECODER_XNNPACK_PASSES]

    XNNPACKPassManager.__init__ = init
    try:
        yield
    finally:
        XNNPACKPassManager.__init__ = original


@contextlib.contextmanager
def preprocess_shares_weights() -> Iterator[None]:
    """Within this block, the copy ExecuTorch hands XNNPACK's preprocess of each partition shares the
    program's weight tensors instead of duplicating them. ExecuTorch deep-copies every partition up front
    "in case backends change graph inside preprocess" (`lower_all_submodules_to_backend`): the graphs, yes,
    but XNNPACK's preprocess only reads the weights (to pack them into its named data), and the copies held
    a second copy of every delegated weight at once — 5 GB of integers at 4B. ExecuTorch's CUDA backend
    shares them the same way in its low-memory mode (`CudaBackend.copy_exported_program_for_preprocess`)."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    def copy_sharing(cls, edge_program, compile_specs):
        return copy.deepcopy(edge_program, {id(t): t for values in (edge_program.state_dict, edge_program.constants)
                                            for t in values.values() if isinstance(t, torch.Tensor)})

    own = XnnpackBackend.__dict__.get("copy_exported_program_for_preprocess")  # None: inherited
    XnnpackBackend.copy_exported_program_for_preprocess = classmethod(copy_sharing)
    try:
        yield
    finally:
        if own is None:
            del XnnpackBackend.copy_exported_program_for_preprocess
        else:
            XnnpackBackend.copy_exported_program_for_preprocess = own


# In ExecuTorch's decomposition table, yet left as they are by it: the symbolic size every dynamic-length
# program reads (`start + T <= cache` of `llama::update_cache`'s checks). ExecuTorch decomposes a program a
# second time whenever one of the table's ops is in it; declaring these kept changes nothing else.
UNCHANGED_BY_DECOMPOSITION = (torch.ops.aten.sym_size.int,)


def unfiltered_when_nothing_to_filter(partitioner_class: type) -> type:
    """`partitioner_class` whose `ops_to_not_decompose` drops its per-node filter when the filter keeps every
    node of those ops in the program. ExecuTorch (`_gen_edge_manager_for_partitioners`) decomposes a program
    three times over for a partitioner with a filter — to mark the nodes it keeps with stand-in ops and
    restore them — and once without one; XNNPACK's filter keeps every linear of ours, so the two ways lower
    the same program, and without the filter two of the three passes over the whole graph are gone (the .pte
    is byte-identical; export time in docs/executorch.md). A program with a node the filter refuses keeps it.
    It also names `UNCHANGED_BY_DECOMPOSITION`, so that a program spelled in the table's decomposed ops
    (`call_positions`) is decomposed once, not twice."""

    class Partitioner(partitioner_class):
        def ops_to_not_decompose(self, ep):
            ops, keeps = super().ops_to_not_decompose(ep)
            if keeps is not None and not all(keeps(n) for n in ep.graph.nodes
                                             if n.op == "call_function" and n.target in ops):
                return ops, keeps
            # (asked again of the lowered edge program, to check that every op named was delegated)
            return ops + (list(UNCHANGED_BY_DECOMPOSITION) if ep.dialect == "ATEN" else []), None

    Partitioner.__name__ = Partitioner.__qualname__ = partitioner_class.__name__
    return Partitioner


def _is_head_slice(match: list[torch.fx.Node], ep: torch.export.ExportedProgram) -> bool:
    """Whether a partitioner config's match is a linear of `xnnpack_quant.SplitHead` (weight in HEAD_PARTS)."""
    from .xnnpack_quant import HEAD_PARTS

    buffers = ep.graph_signature.inputs_to_buffers
    return any(HEAD_PARTS in buffers.get(n.name, "") for n in match if n.op == "placeholder")


def head_slices_apart(partitioner_class: type) -> type:
    """`partitioner_class` that lowers each linear of `SplitHead`'s slices as a delegate of its own (its
    per-op mode) and partitions the rest as usual. One partitioner, not two in a row: ExecuTorch decomposes
    the whole program once more for each partitioner it is given (+28 s for the real 270M)."""
    from torch.fx.passes.infra.partitioner import Partition

    class Partitioner(partitioner_class):
        slices = False  # which matches `get_matched_nodes_from_configs` hands on

        def get_matched_nodes_from_configs(self, ep):
            return [match for match in super().get_matched_nodes_from_configs(ep)
                    if _is_head_slice(match, ep) == self.slices]

        def generate_partitions(self, ep):
            rest = super().generate_partitions(ep)
            self.slices = True
            try:
                slices = self.generate_per_op_partitions(ep)
            finally:
                self.slices = False
            return rest + [Partition(id=len(rest) + i, nodes=p.nodes) for i, p in enumerate(slices)]

    Partitioner.__name__ = Partitioner.__qualname__ = partitioner_class.__name__
    return Partitioner


def lower_to_pte(model: Gemma, stop_ids: tuple[int, ...], progress: bool = True,
                 vision: VisionEncoder | None = None, prefill_chunk: int | None = None):
    """torch.export of each method (dynamic sequence length), XNNPACK partitioning, the ExecuTorch program:
    its `write_to_file(f)` writes the .pte without first joining it into one bytes object (a copy of the
    whole file in memory: 0.8 GB at 1B)."""
    from tqdm import tqdm

    _load_custom_ops()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    bar = tqdm(total=3, desc="export .pte", unit="stage", disable=not progress)
    bar.set_postfix_str("torch.export")
    programs = {}
    with torch.no_grad(), torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        for name, (module, example, dynamic) in pte_methods(model, vision, prefill_chunk).items():
            programs[name] = torch.export.export(module.eval(), example, dynamic_shapes=dynamic, strict=False)
    bar.update()
    bar.set_postfix_str("lower to XNNPACK")
    from .xnnpack_quant import SplitHead, TiedTableHead

    if isinstance(model.lm_head, TiedTableHead):
        for program in programs.values():
            tag_shared_table(program)
    xnnpack = unfiltered_when_nothing_to_filter(XnnpackPartitioner)
    partitioners = [head_slices_apart(xnnpack)() if isinstance(model.lm_head, SplitHead) else xnnpack()]
    # no_grad: with parameters that require grad, ExecuTorch's passes re-trace each `cond` branch for a schema,
    # and a branch that reads `.item()` fails there (PendingUnbackedSymbolNotFound).
    with large_allocations_mapped(), torch.no_grad(), skipping_idle_passes():  # 4B: 14.1 -> 10.1 GiB
        with decoder_xnnpack_passes() if vision is None else contextlib.nullcontext(), preprocess_shares_weights():
            edge = to_edge_transform_and_lower(
                programs["forward"] if vision is None else programs,
                partitioner=partitioners,
                compile_config=EdgeCompileConfig(_check_ir_validity=False),
                constant_methods=runner_metadata(model, stop_ids, prefill_chunk))
        bar.update()
        bar.set_postfix_str("ExecuTorch program")
        et = edge.to_executorch(ExecutorchBackendConfig(
            extract_delegate_segments=True,
            do_quant_fusion_and_const_prop=True,
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
            external_constants=_data_file_of))
    bar.update()
    bar.close()
    return et


def tag_shared_table(program: torch.export.ExportedProgram) -> None:
    """Mark the tied table's two uses (`xnnpack_quant.SHARED_TABLE`: the gather's bytes and the bytes XNNPACK
    packs for `TiedTableHead`, equal by construction) for the same data file: XNNPACK files a tagged weight
    there under its sha256, the emitter its tagged constants, and the file keeps one copy of equal blobs."""
    from .xnnpack_quant import SHARED_TABLE, SHARED_TABLE_FILE

    buffers = program.graph_signature.inputs_to_buffers
    for node in program.graph.nodes:
        if node.op == "placeholder" and buffers.get(node.name, "").endswith(SHARED_TABLE):
            node.meta.setdefault("custom", {})["delegate_constant_tag"] = SHARED_TABLE_FILE


def _data_file_of(node: torch.fx.Node) -> str | None:
    """The emitter's side of `tag_shared_table`: a constant that XNNPACK did not take goes to the tag's file."""
    return node.meta.get("custom", {}).get("delegate_constant_tag")


def _write_program(program, folder: Path) -> None:
    """model.pte, and model.ptd when the program keeps data outside it (the shared table)."""
    with open(folder / "model.pte", "wb") as f:
        program.write_to_file(f)
    program.write_tensor_data_to_file(str(folder))  # nothing when it keeps none


def pte_model(source: Path, max_seq_len: int, vision: bool) -> tuple[Gemma, VisionEncoder | None, Tokenizer]:
    """The modules to lower, from one read of `source`: the float reference, or the integer modules of a
    QuantizedCheckpoint; with `vision`, the tower too."""
    from gemma_edge.calibration.checkpoint import QuantizedCheckpoint, is_quantized_checkpoint, tensors_for
    from gemma_edge.model import load
    from gemma_edge.model.loader import load_vision

    if is_quantized_checkpoint(source):
        from .xnnpack_quant import quantized_pte_model, quantized_pte_vision

        ckpt = QuantizedCheckpoint.load(source, only=tensors_for(vision))
        if ckpt.tokenizer_model is None:
            raise GemmaEdgeError(f"{source}: no tokenizer.model; the .pte ships with one for the LLM runner")
        return (quantized_pte_model(ckpt, max_seq_len), quantized_pte_vision(ckpt) if vision else None,
                Tokenizer(ckpt.tokenizer_model, bos_id=ckpt.config.bos_token_id))
    loaded = load(source, max_seq_len=max_seq_len)
    if loaded.tokenizer is None:
        raise GemmaEdgeError(f"{source}: no tokenizer.model; the .pte ships with one for the LLM runner")
    return loaded.model, load_vision(source) if vision else None, loaded.tokenizer


# Tokens one call of a text .pte takes by default (`get_max_seq_len`; the runners split longer prompts). The
# memory plan and XNNPACK's workspace are sized for the longest call: at a 2,048-token context the 270M's
# plan is 92 MiB for whole-context calls and 34 MiB for 256-token ones (docs/executorch.md).
PREFILL_CHUNK = 256


def export_pte(source: str | Path, out: str | Path, max_seq_len: int = 2048, overwrite: bool = False,
               text_only: bool = False, prefill_chunk: int | None = None) -> Path:
    """`gemma-edge export pte`: model.pte + tokenizer.model + manifest.json in `out`. A multimodal HF folder
    gives the three methods of ExecuTorch's MultimodalRunner unless `text_only`."""
    from gemma_edge.calibration.checkpoint import is_quantized_checkpoint
    from gemma_edge.model.image_processing import settings_for
    from gemma_edge.model.loader import has_vision

    source = Path(source)
    check_output_path(out, [source], overwrite)
    with_vision = not text_only and has_vision(source)
    if prefill_chunk is None and not with_vision:
        prefill_chunk = min(PREFILL_CHUNK, max_seq_len)
    if prefill_chunk is not None and not 0 < prefill_chunk <= max_seq_len:
        raise GemmaEdgeError(f"--prefill-chunk {prefill_chunk}: one call takes 1 to --max-seq-len ({max_seq_len}) "
                             "tokens")
    if with_vision and prefill_chunk not in (None, max_seq_len):
        raise GemmaEdgeError(f"{source}: --prefill-chunk is for text .pte files (ExecuTorch's MultimodalRunner "
                             "does not split prompts); leave it out or pass --text-only")
    model, vision, tokenizer = pte_model(source, max_seq_len, vision=with_vision)
    program = lower_to_pte(model, tokenizer.stop_ids, vision=vision, prefill_chunk=prefill_chunk)
    metadata = runner_metadata(model, tokenizer.stop_ids, prefill_chunk)
    if vision is not None:  # what a runner needs to preprocess images and build the prompt
        metadata["vision"] = vision_metadata(vision.config, settings_for(source, vision.config.image_size))
    return write_artifact(out, source, overwrite, artifact="model.pte", runtime="executorch",
                          tokenizer_model=tokenizer.serialized, metadata=metadata,
                          write=lambda folder: _write_program(program, folder),
                          activations="int8_dynamic" if is_quantized_checkpoint(source) else "none")

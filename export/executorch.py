"""ExecuTorch export: the reference decoder with its caches on ExecuTorch's fused LLM ops, lowered to XNNPACK.

The graph is the reference `Gemma` module with each layer's cache swapped for one built on
`llama::update_cache` / `llama::update_cache_with_indices` and `llama::custom_sdpa` (layout
[batch, seq, heads, dim]). The masks come from the same functions the reference uses
(`attention_mask`, `ring_key_positions`), so sliding-window semantics are defined once:
- global layers: a full-length cache, causal `custom_sdpa` from `start_pos`;
- sliding layers: a ring of `window` slots; attention reads [ring before the call ++ new keys] with an
  explicit mask, then the new keys go to slot `pos % window` (later positions win), so one prefill may
  be longer than the window.
The method takes `tokens [1, T]` and `input_pos [1]` (the start position), T dynamic up to
`max_seq_len`, and returns the last position's logits [1, vocab] — the stock runner reads only those.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from gemma_edge.model.atomic import atomic_dir
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.gemma import Gemma, attention_mask, gelu_tanh_explicit, register_kv, ring_key_positions
from gemma_edge.model.tokenizer import Tokenizer

from .manifest import write_manifest


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

    def attend(self, q, k, v, input_pos, scale: float):
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start < self.max_seq_len)
        torch.ops.llama.update_cache(k.transpose(1, 2).contiguous(), self.k, start)
        torch.ops.llama.update_cache(v.transpose(1, 2).contiguous(), self.v, start)
        out = torch.ops.llama.custom_sdpa(q.transpose(1, 2).contiguous(), self.k, self.v, start, None, 0.0, True, scale)
        return out.transpose(1, 2)


class ETRingCache(nn.Module):
    def __init__(self, num_kv_heads: int, window: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        self.window = window
        register_kv(self, (1, window, num_kv_heads, head_dim), dtype)

    def attend(self, q, k, v, input_pos, scale: float):
        key_pos = torch.cat((ring_key_positions(input_pos[0], self.window), input_pos))
        allowed = attention_mask(input_pos, key_pos, self.window)
        mask = torch.where(allowed, torch.zeros((), dtype=torch.float32), torch.full((), float("-inf")))
        k, v = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        keys, values = torch.cat((self.k, k), dim=1), torch.cat((self.v, v), dim=1)
        out = torch.ops.llama.custom_sdpa(q.transpose(1, 2).contiguous(), keys, values, 0, mask, 0.0, False, scale)
        slots = (input_pos % self.window)[None, :]
        torch.ops.llama.update_cache_with_indices(k, self.k, 0, slots)
        torch.ops.llama.update_cache_with_indices(v, self.v, 0, slots)
        return out.transpose(1, 2)


class PteDecoder(nn.Module):
    """forward(tokens [1, T], input_pos [1]) -> logits [1, vocab] of the last position."""

    def __init__(self, model: Gemma):
        super().__init__()
        self.model = copy.deepcopy(model)
        c = self.model.config
        for layer in self.model.layers:
            layer.mlp.act = gelu_tanh_explicit  # XNNPACK would lower aten.gelu as the erf GELU
            attn = layer.self_attn
            dtype = layer.input_layernorm.weight.dtype  # activations (the linears may be integer)
            attn.cache = (ETRingCache(c.num_kv_heads, c.sliding_window, c.head_dim, dtype) if attn.window
                          else ETFullCache(c.num_kv_heads, self.model.max_seq_len, c.head_dim, dtype))

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        positions = input_pos[0] + torch.arange(tokens.shape[1])
        return self.model(tokens, positions, last_logits_only=True)[:, -1, :]


def runner_metadata(model: Gemma, stop_ids: tuple[int, ...]) -> dict:
    """Constant methods ExecuTorch's LLM runner (and Android's LlmModule) read from the .pte."""
    c = model.config
    return {
        "get_max_seq_len": model.max_seq_len,
        "get_max_context_len": model.max_seq_len,
        "get_vocab_size": c.vocab_size,
        "get_n_layers": c.num_layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_bos_id": c.bos_token_id,
        "get_eos_ids": list(stop_ids),
    }


def lower_to_pte(model: Gemma, stop_ids: tuple[int, ...], progress: bool = True) -> bytes:
    """torch.export with a dynamic sequence length, XNNPACK partitioning, ExecuTorch program bytes."""
    from tqdm import tqdm

    _load_custom_ops()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    bar = tqdm(total=3, desc="export .pte", unit="stage", disable=not progress)
    decoder = PteDecoder(model).eval()
    seq = torch.export.Dim("seq_len", min=1, max=model.max_seq_len)
    example = (torch.tensor([[2, 3]], dtype=torch.long), torch.tensor([0], dtype=torch.long))
    bar.set_postfix_str("torch.export")
    with torch.no_grad(), torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        program = torch.export.export(decoder, example, dynamic_shapes=({1: seq}, None), strict=True)
        program = program.run_decompositions({})
    bar.update()
    bar.set_postfix_str("lower to XNNPACK")
    edge = to_edge_transform_and_lower(
        program, partitioner=[XnnpackPartitioner()],
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
        constant_methods=runner_metadata(model, stop_ids))
    bar.update()
    bar.set_postfix_str("ExecuTorch program")
    et = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True,
        do_quant_fusion_and_const_prop=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass()))
    bar.update()
    bar.close()
    return et.buffer


def pte_model(source: Path, max_seq_len: int) -> tuple[Gemma, Tokenizer]:
    """The module to lower: float reference, or the integer modules of a QuantizedCheckpoint."""
    from gemma_edge.calibration.checkpoint import QuantizedCheckpoint, is_quantized_checkpoint
    from gemma_edge.model import load

    if is_quantized_checkpoint(source):
        from .xnnpack_quant import quantized_pte_model

        ckpt = QuantizedCheckpoint.load(source)
        if ckpt.tokenizer_model is None:
            raise GemmaEdgeError(f"{source}: no tokenizer.model; the .pte ships with one for the LLM runner")
        return quantized_pte_model(ckpt, max_seq_len), Tokenizer(ckpt.tokenizer_model)
    loaded = load(source, max_seq_len=max_seq_len)
    if loaded.tokenizer is None:
        raise GemmaEdgeError(f"{source}: no tokenizer.model; the .pte ships with one for the LLM runner")
    return loaded.model, loaded.tokenizer


def export_pte(source: str | Path, out: str | Path, max_seq_len: int = 2048, overwrite: bool = False) -> Path:
    """`gemma-edge export pte`: model.pte + tokenizer.model + manifest.json in `out`."""
    from gemma_edge.calibration.checkpoint import is_quantized_checkpoint

    source = Path(source)
    if Path(out).exists() and not overwrite:
        raise GemmaEdgeError(f"{out}: output already exists; choose another --out or pass --overwrite")
    model, tokenizer = pte_model(source, max_seq_len)
    pte = lower_to_pte(model, tokenizer.stop_ids)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "model.pte").write_bytes(pte)
        (tmp / "tokenizer.model").write_bytes(tokenizer.serialized)
        write_manifest(tmp, source, artifact="model.pte", runtime="executorch",
                       metadata=runner_metadata(model, tokenizer.stop_ids),
                       activations="int8_dynamic" if is_quantized_checkpoint(source) else "none")
    return Path(out)

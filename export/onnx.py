"""ONNX export on ONNX Runtime's fused ops, built with onnx-ir (no hand-assembled protobuf).

`model.onnx` (+ `model.onnx.data`) has the decoder interface onnxruntime-genai drives:
inputs `input_ids` [B, S] and `attention_mask` [B, P + S] (int64), `past_key_values.{i}.key|value`
[B, kv_heads, P, head_dim]; outputs `logits` [B, 1, vocab] (the last position's) and `present.{i}.key|value`
[B, kv_heads, P + S, head_dim]. Caches grow with the sequence (sliding layers' stay window-sized with
`--windowed-kv`); on sliding layers `com.microsoft.GroupQueryAttention`'s `local_window_size` limits what a
query sees, so prompts longer than the window prefill in one call.

Per layer: SimplifiedLayerNormalization with weight (1 + w) (the sandwich norms and QK-norm), projections,
GroupQueryAttention with fused RoPE (cos/sin caches per layer type, computed by the reference's own
functions), GeGLU with tanh-GELU. Weights come from a float checkpoint or from a QuantizedCheckpoint as
they are; what each quantized format becomes is `onnx_quant`'s tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx_ir as ir
import torch

from gemma_edge.model import GemmaConfig, GemmaEdgeError, Tokenizer
from gemma_edge.model.atomic import check_output_path
from gemma_edge.model.gemma import rope_cos_sin, rope_inv_freq
from gemma_edge.model.hf_tokenizer import write_hf_tokenizer
from gemma_edge.model.vision import VisionConfig

from gemma_edge.calibration.recipe import EMBEDDING, LM_HEAD, PRESETS

from . import onnx_quant
from .manifest import vision_metadata, write_artifact

OPSET = 23
EXTERNAL_DATA = "model.onnx.data"
LAST = 2**63 - 1  # a Slice end past any length
# Positions a sliding layer's cache keeps past its window: onnxruntime-genai's CPU default, which spreads
# GroupQueryAttention's compaction of the cache over 16 steps.
WINDOW_SLACK = 16


def window_cache(c: GemmaConfig) -> int:
    """The KV capacity of a sliding layer with `--windowed-kv` (GroupQueryAttention's windowed cache,
    `sliding_window_cache=1`: the op keeps the last positions and evicts the rest itself)."""
    return c.sliding_window + WINDOW_SLACK


@dataclass
class Weights:
    """Where the exporter reads each tensor: float tensors by name, quantized ones as QTensors."""

    config: GemmaConfig
    floats: dict[str, torch.Tensor]
    quantized: dict = field(default_factory=dict)
    tokenizer: Tokenizer | None = None
    activations: str = "none"
    # The speed path: MatMulNBits at accuracy_level 4 (int8 activations per block). Building records each
    # weight's block there (the tied head under the embedding's name): the manifest's "activation_blocks".
    int8_activations: bool = False
    nbits_blocks: dict[str, int] = field(default_factory=dict)
    # A multimodal source: the SigLIP tower's config; its tensors are in floats / quantized under
    # `vision.VisionEncoder`'s names (no float encoder is built: the graphs read the tensors as stored).
    vision: VisionConfig | None = None


def read_weights(source: Path, vision: bool = False) -> Weights:
    """Every tensor the graphs read, once: a QuantizedCheckpoint's integers as they are, or an HF folder's
    floats; with `vision`, the tower's too (a text-only export drops them)."""
    from gemma_edge.calibration.checkpoint import QuantizedCheckpoint, is_quantized_checkpoint, tensors_for
    from gemma_edge.model import read_checkpoint
    from gemma_edge.model.hf_checkpoint import read_state_dict

    if is_quantized_checkpoint(source):
        ckpt = QuantizedCheckpoint.load(source, only=tensors_for(vision))
        tok = Tokenizer(ckpt.tokenizer_model, bos_id=ckpt.config.bos_token_id) if ckpt.tokenizer_model else None
        return Weights(ckpt.config, ckpt.floats, ckpt.quantized, tok, ckpt.recipe.activations,
                       vision=VisionConfig.from_hf_dict(ckpt.multimodal_config or {}) if vision else None)
    config, state, tok_bytes = read_checkpoint(source, progress=False)
    w = Weights(config, {k: v.float() for k, v in state.items()}, {},
                Tokenizer(tok_bytes, bos_id=config.bos_token_id) if tok_bytes else None)
    if vision:
        w.floats.update(read_state_dict(source, torch.float32, vision=True))
        w.vision = VisionConfig.from_hf_dict(json.loads((source / "config.json").read_text()))
    return w


def _numpy(t: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    t = t.detach().contiguous()
    if t.dtype == torch.float8_e4m3fn:  # numpy has no float8; ml_dtypes' type is what onnx-ir writes
        return t.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    return t.numpy()


class GraphBuilder:
    """A tape of nodes plus named initializers; one method per kind of layer the decoder needs."""

    def __init__(self, w: Weights):
        self.w, self.c = w, w.config
        self.tape = ir.tape.Tape()
        self._consts: dict[str, ir.Value] = {}

    # ---- initializers ----------------------------------------------------------------------------
    def init(self, name: str, array: np.ndarray | torch.Tensor) -> ir.Value:
        """A named initializer, created once: a second request by the same name shares the first."""
        if name not in self._consts:
            self._consts[name] = self.tape.initializer(ir.tensor(_numpy(array), name=name), name=name)
        return self._consts[name]

    def const_i64(self, *values: int) -> ir.Value:
        return self.init("const_i64_" + "_".join(str(v).replace("-", "m") for v in values),
                         np.array(values, dtype=np.int64))

    def const_f32(self, value: float) -> ir.Value:
        return self.init(f"const_f32_{value!r}", np.array(value, dtype=np.float32))

    def op(self, op_type: str, *inputs: ir.Value | None, domain: str = "", **attrs) -> ir.Value:
        return self.tape.op(op_type, list(inputs), attrs or None, domain=domain)

    def model(self, inputs: list[ir.Value], outputs: list[ir.Value], name: str) -> ir.Model:
        graph = ir.Graph(inputs, outputs, nodes=self.tape.nodes, initializers=self.tape.initializers,
                         opset_imports={"": OPSET, "com.microsoft": 1}, name=name)
        return ir.Model(graph, ir_version=11, producer_name="gemma-edge")

    # ---- layers ----------------------------------------------------------------------------------
    def rms_norm(self, x: ir.Value, weight_name: str, eps: float | None = None) -> ir.Value:
        """Gemma's RMSNorm; (1 + w) is computed here in float32, as the reference does."""
        scale = 1.0 + self.w.floats[weight_name].float()
        return self.op("RMSNormalization", x, self.init(weight_name + ".plus1", scale),
                       axis=-1, epsilon=self.c.rms_norm_eps if eps is None else eps, stash_type=1)

    def linear(self, x: ir.Value, name: str) -> ir.Value:
        """x @ W.T for the weight `name` ([out, in]), in whatever format the checkpoint holds it."""
        q = self.w.quantized.get(name)
        if q is None:
            return self.op("MatMul", x, self.init(name + ".T", self.w.floats[name].float().t()))
        return onnx_quant.lowering(onnx_quant.LINEAR, name, q)(self, x, name, q)

    def embedding(self, ids: ir.Value) -> ir.Value:
        q = self.w.quantized.get(EMBEDDING)
        if q is None:
            return self.op("Gather", self.init(EMBEDDING, self.w.floats[EMBEDDING].float()), ids)
        return onnx_quant.lowering(onnx_quant.GATHER, EMBEDDING, q)(self, ids, q)

    def lm_head(self, x: ir.Value) -> ir.Value:
        if LM_HEAD in self.w.quantized or LM_HEAD in self.w.floats:
            return self.linear(x, LM_HEAD)
        q = self.w.quantized.get(EMBEDDING)
        if q is not None:
            return onnx_quant.lowering(onnx_quant.TIED_HEAD, f"{LM_HEAD} (tied to {EMBEDDING})", q)(self, x, q)
        return self.gemm_head(x, self.init(EMBEDDING, self.w.floats[EMBEDDING].float()))

    def gemm_head(self, x: ir.Value, table: ir.Value) -> ir.Value:
        """Logits [B, S, vocab] from a float table [vocab, hidden]."""
        flat = self.op("Reshape", x, self.const_i64(-1, self.c.hidden_size))
        logits = self.op("Gemm", flat, table, transB=1)
        return self.op("Reshape", logits, self.op("Concat", self.op("Shape", x, end=2),
                                                   self.const_i64(self.c.vocab_size), axis=0))


def rope_caches(b: GraphBuilder, max_seq_len: int) -> dict[str, tuple[ir.Value, ir.Value]]:
    """cos/sin [max_seq_len, head_dim / 2] per layer type, computed by the reference's own functions."""
    c, positions, caches = b.c, torch.arange(max_seq_len), {}
    for kind, rope in (("local", c.rope_local), ("global", c.rope_global)):
        cos, sin = rope_cos_sin(rope_inv_freq(rope, c.head_dim), positions)
        caches[kind] = (b.init(f"cos_cache_{kind}", cos[:, : c.head_dim // 2]),
                        b.init(f"sin_cache_{kind}", sin[:, : c.head_dim // 2]))
    return caches


class GqaAttention:
    """Text decoders: com.microsoft.GroupQueryAttention with fused RoPE; always causal, `local_window_size`
    on sliding layers, its sequence bookkeeping taken from the attention mask as onnxruntime-genai feeds it.
    With `windowed`, sliding layers keep a window-sized cache (`window_cache`): their past and present are
    that many positions long whatever the sequence; global layers' grow with it."""

    def __init__(self, b: GraphBuilder, mask: ir.Value, max_seq_len: int, windowed: bool = False):
        self.b, self.caches = b, rope_caches(b, max_seq_len)
        # A window longer than the context never masks anything; onnxruntime-genai refuses a KV capacity
        # below local_window_size, so a short export says its context instead (the same attention).
        self.window = min(b.c.sliding_window, max_seq_len)
        self.windowed = windowed
        one = b.init("i64_1", np.array(1, dtype=np.int64))
        self.total = b.op("Cast", b.op("Gather", b.op("Shape", mask), one), to=ir.DataType.INT32)
        self.seqlens_k = b.op("Cast", b.op("Sub", b.op("ReduceSum", mask, b.const_i64(1), keepdims=0), one),
                              to=ir.DataType.INT32)

    def __call__(self, i: int, q, k, v, past_k, past_v):
        b, c = self.b, self.b.c
        sliding = c.is_sliding(i)
        cos, sin = self.caches["local" if sliding else "global"]
        return b.tape.op_multi_out(
            "GroupQueryAttention", [q, k, v, past_k, past_v, self.seqlens_k, self.total, cos, sin],
            dict(num_heads=c.num_heads, kv_num_heads=c.num_kv_heads, scale=c.query_pre_attn_scalar ** -0.5,
                 local_window_size=self.window if sliding else -1, do_rotary=1, rotary_interleaved=0,
                 **({"sliding_window_cache": 1} if sliding and self.windowed else {})),
            num_outputs=3, domain="com.microsoft")


class MaskedAttention:
    """Decoders fed embeddings with an image flag channel (multimodal): RotaryEmbedding + the standard
    Attention op (opset 23) with an explicit mask, because GroupQueryAttention cannot unmask later keys.

    The mask is the reference's `attention_mask`: key not in the future, or in the same image as the query
    (images numbered as `image_groups` does, from the flags of this call: an image arrives in one call),
    and on sliding layers inside the window; padding from `attention_mask` is masked too."""

    def __init__(self, b: GraphBuilder, flags: ir.Value, mask: ir.Value, past_k0: ir.Value, max_seq_len: int):
        self.b, self.caches = b, rope_caches(b, max_seq_len)
        i64 = ir.DataType.INT64
        zero, one = b.init("i64_0", np.array(0, dtype=np.int64)), b.init("i64_1", np.array(1, dtype=np.int64))
        past = b.op("Gather", b.op("Shape", past_k0), b.init("i64_2", np.array(2, dtype=np.int64)))
        total = b.op("Gather", b.op("Shape", mask), one)
        q_pos = b.op("Range", past, total, one)  # [T]
        k_pos = b.op("Range", zero, total, one)  # [P + T]
        batch_seq = b.op("Shape", flags)
        self.position_ids = b.op("Expand", b.op("Unsqueeze", q_pos, b.const_i64(0)), batch_seq)
        # image groups: a running count of image starts, -1 on text (and on every cached key)
        image = b.op("Cast", flags, to=i64)
        text_first = b.op("Mul", b.op("Slice", image, b.const_i64(0), b.const_i64(1), b.const_i64(1)), zero)
        before = b.op("Concat", text_first, b.op("Slice", image, b.const_i64(0), b.const_i64(-1), b.const_i64(1)),
                      axis=1)  # the flag of the previous position
        starts = b.op("CumSum", b.op("Cast", b.op("Greater", image, before), to=i64), one)
        minus1 = b.init("i64_m1", np.array(-1, dtype=np.int64))
        groups = b.op("Where", flags, starts, minus1)  # [B, T]
        past_groups = b.op("Expand", minus1, b.op("Concat", b.op("Slice", batch_seq, b.const_i64(0), b.const_i64(1)),
                                                  b.op("Unsqueeze", past, b.const_i64(0)), axis=0))
        key_groups = b.op("Concat", past_groups, groups, axis=1)  # [B, P + T]
        q_group = b.op("Unsqueeze", groups, b.const_i64(2))
        same_image = b.op("And", b.op("Equal", q_group, b.op("Unsqueeze", key_groups, b.const_i64(1))),
                          b.op("Greater", q_group, zero))  # [B, T, P + T]
        distance = b.op("Sub", b.op("Unsqueeze", q_pos, b.const_i64(1)), b.op("Unsqueeze", k_pos, b.const_i64(0)))
        causal = b.op("GreaterOrEqual", distance, zero)  # [T, P + T]
        filled = b.op("Unsqueeze", b.op("Cast", mask, to=ir.DataType.BOOL), b.const_i64(1))  # [B, 1, P + T]
        allowed = b.op("And", b.op("Or", causal, same_image), filled)
        window = b.init("i64_window", np.array(b.c.sliding_window, dtype=np.int64))
        self.masks = {"global": b.op("Unsqueeze", allowed, b.const_i64(1)),
                      "local": b.op("Unsqueeze", b.op("And", allowed, b.op("Less", distance, window)),
                                    b.const_i64(1))}  # [B, 1, T, P + T]

    def __call__(self, i: int, q, k, v, past_k, past_v):
        b, c = self.b, self.b.c
        kind = "local" if c.is_sliding(i) else "global"
        cos, sin = self.caches[kind]
        q = b.op("RotaryEmbedding", q, cos, sin, self.position_ids, num_heads=c.num_heads)
        k = b.op("RotaryEmbedding", k, cos, sin, self.position_ids, num_heads=c.num_kv_heads)
        return b.tape.op_multi_out(
            "Attention", [q, k, v, self.masks[kind], past_k, past_v],
            dict(q_num_heads=c.num_heads, kv_num_heads=c.num_kv_heads, scale=c.query_pre_attn_scalar ** -0.5,
                 is_causal=0), num_outputs=3)


def build_graph(w: Weights, max_seq_len: int, embeds: bool = False, windowed_kv: bool = False) -> ir.Model:
    """The decoder: `input_ids` in (text models, GroupQueryAttention), or with `embeds` the multimodal
    decoder, `inputs_embeds` [B, S, hidden + 1] in (the last channel flags image soft tokens).

    The text decoder's logits are the last position's, [B, 1, vocab]: the LM head (the largest matmul of a
    small Gemma) runs once per call instead of once per prompt token, and onnxruntime-genai reads a static 1
    there as a model that trims its prefill logits. The multimodal decoder keeps every position's."""
    c = w.config
    b = GraphBuilder(w)
    f32, i64 = ir.DataType.FLOAT, ir.DataType.INT64
    mask = ir.Value(name="attention_mask", type=ir.TensorType(i64),
                    shape=ir.Shape(["batch_size", "total_sequence_length"]))
    kv_shape = ["batch_size", c.num_kv_heads, "past_sequence_length", c.head_dim]
    present_shape = ["batch_size", c.num_kv_heads, "total_sequence_length", c.head_dim]
    past = [ir.Value(name=f"past_key_values.{i}.{kv}", type=ir.TensorType(f32), shape=ir.Shape(kv_shape))
            for i in range(c.num_layers) for kv in ("key", "value")]
    if embeds:
        first = ir.Value(name="inputs_embeds", type=ir.TensorType(f32),
                         shape=ir.Shape(["batch_size", "sequence_length", c.hidden_size + 1]))
        x = b.op("Slice", first, b.const_i64(0), b.const_i64(c.hidden_size), b.const_i64(2))
        flags = b.op("Greater", b.op("Squeeze", b.op("Slice", first, b.const_i64(c.hidden_size),
                                                     b.const_i64(c.hidden_size + 1), b.const_i64(2)),
                                     b.const_i64(2)), b.const_f32(0.5))
        attend = MaskedAttention(b, flags, mask, past[0], max_seq_len)
    else:
        first = ir.Value(name="input_ids", type=ir.TensorType(i64), shape=ir.Shape(["batch_size", "sequence_length"]))
        x = b.op("Mul", b.embedding(first), b.const_f32(float(np.float32(math.sqrt(c.hidden_size)))))
        attend = GqaAttention(b, mask, max_seq_len, windowed_kv)
    outputs = []
    for i in range(c.num_layers):
        p = f"layers.{i}."
        h = b.rms_norm(x, p + "input_layernorm.weight")
        q = b.linear(h, p + "self_attn.q_proj.weight")
        k = b.linear(h, p + "self_attn.k_proj.weight")
        v = b.linear(h, p + "self_attn.v_proj.weight")
        q = b.op("Reshape", b.rms_norm(b.op("Reshape", q, b.const_i64(0, 0, -1, c.head_dim)),
                                       p + "self_attn.q_norm.weight"), b.const_i64(0, 0, -1))
        k = b.op("Reshape", b.rms_norm(b.op("Reshape", k, b.const_i64(0, 0, -1, c.head_dim)),
                                       p + "self_attn.k_norm.weight"), b.const_i64(0, 0, -1))
        attn, present_k, present_v = attend(i, q, k, v, past[2 * i], past[2 * i + 1])
        present_k.name, present_v.name = f"present.{i}.key", f"present.{i}.value"
        present_k.shape = present_v.shape = ir.Shape(present_shape)
        present_k.type = present_v.type = ir.TensorType(f32)
        outputs += [present_k, present_v]
        o = b.rms_norm(b.linear(attn, p + "self_attn.o_proj.weight"), p + "post_attention_layernorm.weight")
        x = b.op("Add", x, o)
        h = b.rms_norm(x, p + "pre_feedforward_layernorm.weight")
        gate = b.op("Gelu", b.linear(h, p + "mlp.gate_proj.weight"), approximate="tanh")
        m = b.linear(b.op("Mul", gate, b.linear(h, p + "mlp.up_proj.weight")), p + "mlp.down_proj.weight")
        x = b.op("Add", x, b.rms_norm(m, p + "post_feedforward_layernorm.weight"))
    if not embeds:  # logits of the last position only: what a runner reads, and genai takes a [B, 1, vocab]
        x = b.op("Slice", x, b.const_i64(-1), b.const_i64(LAST), b.const_i64(1))
    logits = b.lm_head(b.rms_norm(x, "norm.weight"))
    if c.final_logit_softcapping is not None:
        cap = b.const_f32(float(c.final_logit_softcapping))
        logits = b.op("Mul", b.op("Tanh", b.op("Div", logits, cap)), cap)
    logits = b.op("Identity", logits)
    logits.name, logits.type = "logits", ir.TensorType(f32)
    logits.shape = ir.Shape(["batch_size", "sequence_length" if embeds else 1, c.vocab_size])
    return b.model([first, mask, *past], [logits, *outputs], "gemma3_decoder")


def genai_config(c: GemmaConfig, tokenizer: Tokenizer, max_seq_len: int, vision=None,
                 windowed_kv: bool = False) -> dict:
    """The description onnxruntime-genai reads (greedy search by default). With `vision` (a VisionConfig),
    its `gemma3` pipeline: vision.onnx -> embedding.onnx -> the decoder fed embeddings. genai sizes both
    feature buffers by `decoder.hidden_size`, which is hidden + 1 there: the image flag channel.
    Text-only folders share the past/present KV buffer (GroupQueryAttention appends in place; no copy of the
    cache per step); genai's multimodal pipeline fails with it on our decoder (an Expand in the image mask
    reads the past's shape), so multimodal folders keep separate buffers. `sliding_window.layers` tells genai
    which layers' caches are window-sized (`window_cache`)."""
    io = {"attention_mask": "attention_mask", "past_key_names": "past_key_values.%d.key",
          "past_value_names": "past_key_values.%d.value"}
    session = {"log_id": "onnxruntime-genai", "provider_options": []}
    model = {
        "bos_token_id": tokenizer.bos_id,
        "context_length": max_seq_len,
        "decoder": {
            "session_options": session,
            "filename": "model.onnx",
            "head_size": c.head_dim,
            "hidden_size": c.hidden_size,
            "inputs": {"input_ids": "input_ids", **io},
            "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                        "present_value_names": "present.%d.value"},
            "num_attention_heads": c.num_heads,
            "num_hidden_layers": c.num_layers,
            "num_key_value_heads": c.num_kv_heads,
        },
        "eos_token_id": list(tokenizer.stop_ids),
        "pad_token_id": tokenizer.pad_id,
        "type": "gemma3_text",
        "vocab_size": c.vocab_size,
    }
    if windowed_kv:  # sliding layers' caches: window-sized
        model["decoder"]["sliding_window"] = {
            "window_size": c.sliding_window, "cache_slack": WINDOW_SLACK, "slide_key_value_cache": False,
            "slide_inputs": False, "layers": [i for i in range(c.num_layers) if c.is_sliding(i)]}
    if vision is not None:
        model["type"], model["image_token_id"] = "gemma3", vision.image_token_id
        model["decoder"]["hidden_size"] = c.hidden_size + 1
        model["decoder"]["inputs"] = {"inputs_embeds": "inputs_embeds", **io}
        model["vision"] = {"filename": "vision.onnx", "config_filename": "processor_config.json",
                           "session_options": session, "inputs": {"pixel_values": "pixel_values"},
                           "outputs": {"image_features": "image_features"}}
        model["embedding"] = {"filename": "embedding.onnx", "session_options": session,
                              "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                              "outputs": {"inputs_embeds": "inputs_embeds"}}
    return {
        "model": model,
        "search": {"do_sample": False, "early_stopping": True, "max_length": max_seq_len, "min_length": 0,
                   "num_beams": 1, "num_return_sequences": 1, "past_present_share_buffer": vision is None,
                   "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0,
                   "length_penalty": 1.0, "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }


def processor_config(settings) -> dict:
    """onnxruntime-extensions' image preprocessing for genai's `og.Images` path (its resize is not Pillow's:
    pixels differ slightly from `image_processing.preprocess`; Pan & Scan is not done there)."""
    ops = [("decode_image", "DecodeImage", {"color_space": "RGB"}),
           ("resize", "Resize", {"interpolation": "LINEAR", "width": settings.size, "height": settings.size,
                                 "keep_aspect_ratio": 0}),
           ("re-scale", "Rescale", {}),
           ("normalize", "Normalize", {"mean": list(settings.mean), "std": list(settings.std)}),
           ("to_channel_first", "Permute3D", {"dims": [2, 0, 1]})]
    return {"processor": {"name": "gemma_3_image_processing", "transforms": [
        {"operation": {"name": n, "type": t, **({"attrs": a} if a else {})}} for n, t, a in ops]}}


def _write_json(path: Path, d: dict) -> None:
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def export_onnx(source: str | Path, out: str | Path, max_seq_len: int = 2048, overwrite: bool = False,
                text_only: bool = False, int8_activations: bool = False, windowed_kv: bool = False) -> Path:
    """`gemma-edge export onnx`: model.onnx + model.onnx.data + genai_config.json + tokenizer (tokenizer.model,
    and tokenizer.json + tokenizer_config.json with the chat template for genai apps) + manifest.
    A multimodal HF folder also gives vision.onnx and embedding.onnx (genai's `gemma3` layout, the decoder
    fed embeddings) unless `text_only`. `int8_activations`: the speed path, every MatMulNBits at
    accuracy_level 4 (onnxruntime quantizes its input to int8 per block of the weight); the default keeps
    float activations, the exact path. `windowed_kv`: sliding layers keep window + 16 positions of KV
    instead of the whole context (`GqaAttention`); a genai app must then ask for a `max_length` of at least
    the window, or GroupQueryAttention refuses the cache."""
    import onnx

    from gemma_edge.model.image_processing import settings_for
    from gemma_edge.model.loader import has_vision

    from .onnx_vision import build_embedding_graph, build_vision_graph

    source = Path(source)
    check_output_path(out, [source], overwrite)
    w = read_weights(source, vision=not text_only and has_vision(source))
    vision = w.vision
    if w.activations != "none":
        weight_only = ", ".join(name for name, r in PRESETS.items() if r.activations == "none")
        raise GemmaEdgeError(f"{source}: recipe quantizes activations ({w.activations}); ONNX export takes "
                             f"weight-only recipes ({weight_only}), with --int8-activations for onnxruntime's own "
                             "int8 activations")
    if w.tokenizer is None:
        raise GemmaEdgeError(f"{source}: no tokenizer.model; the ONNX folder ships with one")
    w.int8_activations = int8_activations
    if max_seq_len > w.config.max_position_embeddings:
        raise GemmaEdgeError(f"--max-seq-len {max_seq_len} exceeds the model's context of "
                             f"{w.config.max_position_embeddings}")
    if windowed_kv and (vision is not None or max_seq_len <= window_cache(w.config)):
        raise GemmaEdgeError(f"--windowed-kv needs a text-only export with --max-seq-len above "
                             f"{window_cache(w.config)} (the sliding window + {WINDOW_SLACK}); "
                             "below that every cache is as short already")
    models = {"model.onnx": build_graph(w, max_seq_len, embeds=vision is not None, windowed_kv=windowed_kv)}
    metadata = {"max_seq_len": max_seq_len, "external_data": EXTERNAL_DATA,
                "eos_ids": list(w.tokenizer.stop_ids), "bos_id": w.tokenizer.bos_id}
    if vision is not None:
        models["vision.onnx"] = build_vision_graph(w)
        models["embedding.onnx"] = build_embedding_graph(w, vision.image_token_id)
        settings = settings_for(source, vision.image_size)
        metadata["vision"] = vision_metadata(vision, settings)
    if int8_activations:
        if not w.nbits_blocks:
            raise GemmaEdgeError(f"{source}: no weight runs on MatMulNBits (int4, or int8 per block), so "
                                 "--int8-activations has nothing to speed up; quantize with such a recipe first")
        metadata["activation_blocks"] = dict(sorted(w.nbits_blocks.items()))

    def write(folder: Path) -> None:
        for name, model in models.items():
            ir.save(model, folder / name, external_data=name + ".data")
            onnx.checker.check_model(str(folder / name), full_check=False)
        _write_json(folder / "genai_config.json",
                    genai_config(w.config, w.tokenizer, max_seq_len, vision, windowed_kv))
        if vision is not None:
            _write_json(folder / "processor_config.json", processor_config(settings))
        write_hf_tokenizer(w.tokenizer, folder, max_seq_len)

    return write_artifact(out, source, overwrite, artifact="model.onnx", runtime="onnxruntime",
                          tokenizer_model=w.tokenizer.serialized, metadata=metadata, write=write,
                          activations="int8_block" if int8_activations else "none")

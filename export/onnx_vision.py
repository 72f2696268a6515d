"""The image half of a multimodal ONNX export, laid out as onnxruntime-genai's vision pipelines run it.

genai runs three models per prompt: `vision.onnx` (pixels -> image features), `embedding.onnx` (token ids +
image features -> embeddings) and the decoder (`onnx.build_graph(..., embeds=True)`). Both feature tensors
are [tokens, decoder.hidden_size] in genai, and that width is hidden + 1 here: as in the `.pte`, the last
channel flags image soft tokens (1) against text (0), and the decoder builds Gemma 3's bidirectional image
mask from it.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .onnx import GraphBuilder, Weights


def build_vision_graph(w: Weights) -> ir.Model:
    """`pixel_values` [N, 3, S, S] (preprocessed) -> `image_features` [N * tokens, hidden + 1], flag 1: the
    tower's tensors as `w` holds them (a quantized checkpoint's integers on MatMulNBits / DequantizeLinear)."""
    vc, b = w.vision, GraphBuilder(w)
    f32 = ir.DataType.FLOAT
    pixels = ir.Value(name="pixel_values", type=ir.TensorType(f32),
                      shape=ir.Shape(["num_images", vc.num_channels, vc.image_size, vc.image_size]))
    t = "vision_tower."

    def linear(x: ir.Value, name: str) -> ir.Value:
        return b.op("Add", b.linear(x, name + ".weight"), b.init(name + ".bias", b.w.floats[name + ".bias"]))

    def layer_norm(x: ir.Value, name: str) -> ir.Value:
        return b.op("LayerNormalization", x, b.init(name + ".weight", b.w.floats[name + ".weight"]),
                    b.init(name + ".bias", b.w.floats[name + ".bias"]), axis=-1, epsilon=vc.layer_norm_eps)

    patches = t + "embeddings.patch_embedding"
    x = b.op("Conv", pixels, b.init(patches + ".weight", b.w.floats[patches + ".weight"]),
             b.init(patches + ".bias", b.w.floats[patches + ".bias"]),
             kernel_shape=[vc.patch_size] * 2, strides=[vc.patch_size] * 2)
    x = b.op("Transpose", b.op("Reshape", x, b.const_i64(0, vc.hidden_size, -1)), perm=[0, 2, 1])
    position = t + "embeddings.position_embedding.weight"
    x = b.op("Add", x, b.init(position, b.w.floats[position]))
    for i in range(vc.num_layers):
        p = f"{t}encoder.layers.{i}."
        h = layer_norm(x, p + "layer_norm1")
        q, k, v = (linear(h, p + f"self_attn.{n}_proj") for n in "qkv")
        attn = b.op("Attention", q, k, v, q_num_heads=vc.num_heads, kv_num_heads=vc.num_heads)  # bidirectional
        x = b.op("Add", x, linear(attn, p + "self_attn.out_proj"))
        h = b.op("Gelu", linear(layer_norm(x, p + "layer_norm2"), p + "mlp.fc1"), approximate="tanh")
        x = b.op("Add", x, linear(h, p + "mlp.fc2"))
    x = layer_norm(x, t + "post_layernorm")
    # projector: average-pool the patch grid to tokens, RMSNorm, project to the decoder's width
    side, kernel = vc.patches_per_side, vc.patches_per_side // round(vc.mm_tokens_per_image ** 0.5)
    grid = b.op("Reshape", b.op("Transpose", x, perm=[0, 2, 1]), b.const_i64(0, vc.hidden_size, side, side))
    pooled = b.op("AveragePool", grid, kernel_shape=[kernel] * 2, strides=[kernel] * 2)
    tokens = b.op("Transpose", b.op("Reshape", pooled, b.const_i64(0, vc.hidden_size, -1)), perm=[0, 2, 1])
    m = "multi_modal_projector."
    tokens = b.rms_norm(tokens, m + "mm_soft_emb_norm.weight", eps=vc.layer_norm_eps)
    projected = b.op("MatMul", tokens, b.init(m + "mm_input_projection_weight",
                                              b.w.floats[m + "mm_input_projection_weight"]))
    flagged = b.op("Pad", projected, b.const_i64(0, 0, 0, 0, 0, 1), b.const_f32(1.0))
    features = b.op("Reshape", flagged, b.const_i64(-1, vc.text_hidden_size + 1))
    features.name, features.type = "image_features", ir.TensorType(f32)
    features.shape = ir.Shape(["num_image_tokens", vc.text_hidden_size + 1])
    return b.model([pixels], [features], "gemma3_vision")


def build_embedding_graph(w: Weights, image_token_id: int) -> ir.Model:
    """`input_ids` [B, S] + `image_features` [tokens, hidden + 1] -> `inputs_embeds` [B, S, hidden + 1]:
    scaled token embeddings with flag 0, and the image features, in order, at the image soft tokens.

    An empty `image_features` (decode steps; genai passes [0, hidden + 1]) is fine: a zero row is appended
    and text positions index it."""
    c, b = w.config, GraphBuilder(w)
    f32, i64 = ir.DataType.FLOAT, ir.DataType.INT64
    ids = ir.Value(name="input_ids", type=ir.TensorType(i64), shape=ir.Shape(["batch_size", "sequence_length"]))
    features = ir.Value(name="image_features", type=ir.TensorType(f32),
                        shape=ir.Shape(["num_image_tokens", c.hidden_size + 1]))
    is_image = b.op("Equal", ids, b.init("image_token_id", np.array(image_token_id, dtype=np.int64)))
    text_ids = b.op("Where", is_image, b.init("pad_token_id", np.array(c.pad_token_id, dtype=np.int64)), ids)
    text = b.op("Mul", b.embedding(text_ids), b.const_f32(float(np.float32(np.sqrt(c.hidden_size)))))
    text = b.op("Pad", text, b.const_i64(0, 0, 0, 0, 0, 1), b.const_f32(0.0))
    table = b.op("Concat", features, b.init("zero_row", np.zeros((1, c.hidden_size + 1), np.float32)), axis=0)
    order = b.op("Sub", b.op("CumSum", b.op("Cast", is_image, to=i64), b.const_i64(1)), b.const_i64(1))
    rows = b.op("Where", is_image, order, b.op("Sub", b.op("Shape", table, end=1), b.const_i64(1)))
    embeds = b.op("Where", b.op("Unsqueeze", is_image, b.const_i64(-1)), b.op("Gather", table, rows), text)
    embeds.name, embeds.type = "inputs_embeds", ir.TensorType(f32)
    embeds.shape = ir.Shape(["batch_size", "sequence_length", c.hidden_size + 1])
    return b.model([ids, features], [embeds], "gemma3_embedding")

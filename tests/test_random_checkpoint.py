"""Random checkpoints at released shapes (issue 21): hub layout that transformers loads as it loads Google's
folders, bf16 shards with an index, deterministic, scaled like a trained model."""

import json

import torch

from gemma_edge.model import load
from gemma_edge.model import random_checkpoint as rc
from gemma_edge.model.config import PRESETS
from gemma_edge.model.tiny import tiny_config
from gemma_edge.model.tokenizer import tiny_tokenizer_model


def _write(tmp_path, monkeypatch, name="ckpt", seed=0, **config):
    monkeypatch.setattr(rc, "SHARD_BYTES", 60_000)  # several shards from a tiny model
    monkeypatch.setattr(rc, "ROWS", 16)  # several row chunks per tensor
    return rc.write_random_checkpoint(tiny_config(**config), tmp_path / name, seed=seed,
                                      tokenizer_model=tiny_tokenizer_model(), progress=False)


def test_shards_and_index_are_laid_out_as_the_hub_writes_them(tmp_path, monkeypatch):
    from safetensors import safe_open

    folder = _write(tmp_path, monkeypatch)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards == sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    assert all(name.startswith("model.") for name in index["weight_map"])
    total = 0
    for shard in shards:
        with safe_open(str(folder / shard), "pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                assert t.dtype == torch.bfloat16 and index["weight_map"][key] == shard
                total += t.numel() * 2
    assert total == index["metadata"]["total_size"]


def test_transformers_loads_it_and_computes_what_our_reference_computes(tmp_path, monkeypatch):
    from transformers import Gemma3ForCausalLM

    folder = _write(tmp_path, monkeypatch)
    hf, info = Gemma3ForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager",
                                                 output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = load(folder, max_seq_len=64, progress=False).model
    ids = torch.tensor([[2, 17, 33, 5, 90, 41, 7, 12, 60, 3, 22, 48]])
    with torch.no_grad():
        want = hf(ids).logits[0]
        got = ours(ids, torch.arange(ids.shape[1]))[0]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_writing_is_deterministic_per_tensor_and_scaled_like_a_trained_model(tmp_path, monkeypatch):
    a = _write(tmp_path, monkeypatch, "a")
    b = _write(tmp_path, monkeypatch, "b")
    other = _write(tmp_path, monkeypatch, "c", seed=1)
    shards = sorted(p.name for p in a.glob("*.safetensors"))
    assert [(a / s).read_bytes() for s in shards] == [(b / s).read_bytes() for s in shards]
    assert (a / shards[0]).read_bytes() != (other / shards[0]).read_bytes()
    # a tensor does not depend on what was drawn before it
    alone = rc.random_tensor("layers.3.mlp.up_proj.weight", (128, 64))
    assert torch.equal(alone, rc.random_tensor("layers.3.mlp.up_proj.weight", (128, 64)))
    state = load(a, progress=False).model.state_dict()
    up, norm = state["layers.3.mlp.up_proj.weight"], state["layers.3.input_layernorm.weight"]
    assert abs(up.std().item() - 64 ** -0.5) < 0.05 * 64 ** -0.5
    assert abs(norm.std().item() - 0.5) < 0.15


def test_released_shapes_have_the_released_parameter_counts():
    """The 270M's and 1B's exact counts as the hub's checkpoints hold them (268,098,176; 999,885,952), the
    4B's text decoder 3.88B of its 4.3B, the rest the SigLIP tower. From the meta device: no memory."""
    counts = {p: sum(torch.Size(s).numel() for s in rc.decoder_shapes(PRESETS[p]).values())
              for p in ("270m", "1b", "4b")}
    assert counts["270m"] == 268_098_176 and counts["1b"] == 999_885_952
    assert 3.85e9 < counts["4b"] < 3.9e9
    # with its SigLIP tower and projector, the 4B's whole count: its index's total_size is 8,600,158,944 bf16 bytes
    tower = rc.vision_shapes(rc.multimodal_config(PRESETS["4b"], rc.SIGLIP))
    assert counts["4b"] + sum(torch.Size(s).numel() for s in tower.values()) == 4_300_079_472


def test_a_multimodal_random_checkpoint_is_the_released_layout_and_transformers_sees_its_images(tmp_path, monkeypatch):
    """The 4B's layout (Gemma3ForConditionalGeneration: language_model.model.*, vision_tower.vision_model.*,
    multi_modal_projector.*) at a tiny shape: transformers loads every tensor, and its image features and
    logits are our encoder's and reference's."""
    from transformers import Gemma3ForConditionalGeneration

    from gemma_edge.model.loader import load_vision

    monkeypatch.setattr(rc, "SHARD_BYTES", 60_000)
    text = tiny_config(num_layers=2)
    vocab = text.vocab_size
    text = type(text)(**{**text.__dict__, "vocab_size": vocab + 3})
    tokens = {"mm_tokens_per_image": 16, "boi_token_index": vocab, "eoi_token_index": vocab + 1,
              "image_token_index": vocab + 2}
    vision = {**rc.SIGLIP, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
              "num_attention_heads": 4, "image_size": 32, "patch_size": 4}
    folder = rc.write_random_checkpoint(text, tmp_path / "mm", tokenizer_model=tiny_tokenizer_model(),
                                        progress=False, vision=vision, tokens=tokens)
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert {k.split(".")[0] for k in index} == {"language_model", "vision_tower", "multi_modal_projector"}
    assert any(k.startswith("vision_tower.vision_model.encoder.layers.1.") for k in index)
    hf, info = Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32,
                                                              attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    encoder = load_vision(folder)
    ln = encoder.vision_tower.encoder.layers[0].layer_norm1.weight
    assert abs(ln.mean().item() - 1.0) < 0.05  # SigLIP's LayerNorm near 1, not Gemma's (1 + w) near 0
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = [2, 5, vocab] + [vocab + 2] * 16 + [vocab + 1, 7, 9]
    with torch.no_grad():
        features = encoder(pixels)
        ours = load(folder, max_seq_len=64, progress=False).model(torch.tensor([ids]), torch.arange(len(ids)),
                                                                   image_features=features)[0]
        input_ids = torch.tensor([ids])
        theirs = hf(input_ids=input_ids, pixel_values=pixels, token_type_ids=(input_ids == vocab + 2).long(),
                    use_cache=False).logits[0]
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)

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
    4B's text decoder 3.88B of its 4.3B (the rest is the SigLIP tower). From the meta device: no memory."""
    counts = {p: sum(torch.Size(s).numel() for s in rc.decoder_shapes(PRESETS[p]).values())
              for p in ("270m", "1b", "4b")}
    assert counts["270m"] == 268_098_176 and counts["1b"] == 999_885_952
    assert 3.85e9 < counts["4b"] < 3.9e9

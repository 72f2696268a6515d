"""The reference model against transformers' Gemma3ForCausalLM on tiny random checkpoints."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gemma_edge.model import GLOBAL, SLIDING, load
from gemma_edge.model.tiny import tiny_config, write_tiny_checkpoint

CASES = {
    "mqa-window8": tiny_config(num_kv_heads=1, sliding_window=8),
    "gqa-window3": tiny_config(num_heads=4, num_kv_heads=2, sliding_window=3),
    "mha-window16": tiny_config(num_heads=2, num_kv_heads=2, sliding_window=16),
    "linear-rope-x8": tiny_config(num_kv_heads=2, global_rope_factor=8.0, sliding_window=5),
    "explicit-layer-types": tiny_config(num_layers=4, layer_types=(GLOBAL, SLIDING, GLOBAL, SLIDING)),
    "untied-head-final-softcap": tiny_config(tie_word_embeddings=False, final_logit_softcapping=3.0),
    "query-scalar-not-head-dim": tiny_config(query_pre_attn_scalar=40.0),
}


def _hf(folder):
    from transformers import Gemma3ForCausalLM

    return Gemma3ForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_equal_transformers(tmp_path, name):
    config = CASES[name]
    folder = write_tiny_checkpoint(tmp_path / name, config, seed=1)
    ours = load(folder).model
    tokens = torch.randint(0, config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = _hf(folder)(tokens).logits
        got = ours(tokens, torch.arange(48))
    assert (got - expected).abs().max().item() <= 1e-4


def test_multimodal_layout_loads_the_decoder(tmp_path):
    """4B+ checkpoints keep the decoder under `model.language_model.` and the config under `text_config`."""
    folder = write_tiny_checkpoint(tmp_path / "text", tiny_config(), seed=3)
    mm = tmp_path / "mm"
    mm.mkdir()
    text_cfg = json.loads((folder / "config.json").read_text())
    (mm / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text_cfg,
                                                "vision_config": {"model_type": "siglip_vision_model"}}))
    tensors = {k.replace("model.", "model.language_model.", 1): v
               for k, v in load_file(folder / "model.safetensors").items()}
    tensors["model.vision_tower.vision_model.post_layernorm.weight"] = torch.ones(4)
    save_file(tensors, mm / "model.safetensors")
    tokens = torch.arange(20)[None]
    with torch.no_grad():
        a = load(folder).model(tokens, torch.arange(20))
        b = load(mm).model(tokens, torch.arange(20))
    assert torch.equal(a, b)


def test_sharded_bf16_checkpoint(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "one", tiny_config(), seed=4)
    tensors = load_file(folder / "model.safetensors")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((folder / "config.json").read_text())
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in halves.items():
        save_file({k: tensors[k].to(torch.bfloat16) for k in keys}, sharded / file)
        weight_map.update({k: file for k in keys})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    got = load(sharded).model.state_dict()
    for k, v in tensors.items():
        assert torch.equal(got[k.removeprefix("model.")], v.to(torch.bfloat16).float())

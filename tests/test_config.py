import json

import pytest

from gemma_edge.model import GLOBAL, PRESETS, SLIDING, GemmaConfig, GemmaEdgeError, RopeConfig

# The released 270M config.json (transformers 4.x flat keys).
CONFIG_270M = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 262144,
    "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
    "num_key_value_heads": 1, "head_dim": 256, "sliding_window": 512, "query_pre_attn_scalar": 256,
    "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "eos_token_id": 1, "bos_token_id": 2,
    "pad_token_id": 0, "final_logit_softcapping": None, "attn_logit_softcapping": None,
    "hidden_activation": "gelu_pytorch_tanh",
}

# The 4B multimodal config: the text part under text_config, partial (the rest are HF defaults).
CONFIG_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "model_type": "siglip_vision_model"},
    "mm_tokens_per_image": 256,
}


def test_270m_text_config():
    c = GemmaConfig.from_hf_dict(CONFIG_270M)
    assert c.layer_types == tuple(([SLIDING] * 5 + [GLOBAL]) * 3)
    assert c.is_sliding(0) and not c.is_sliding(5)
    assert c.rope_local == RopeConfig(10_000.0) and c.rope_global == RopeConfig(1_000_000.0)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.sliding_window) == (4, 1, 256, 512)
    assert c == PRESETS["270m"].replace(eos_token_ids=(1,))


def test_4b_multimodal_text_config_with_defaults():
    c = GemmaConfig.from_hf_dict(CONFIG_4B)
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.vocab_size) == (2560, 34, 8, 4, 262208)
    assert c.rope_global == RopeConfig(1_000_000.0, 8.0) and c.rope_local == RopeConfig(10_000.0, 1.0)
    assert c.sliding_window == 1024
    assert [i for i, t in enumerate(c.layer_types) if t == GLOBAL] == [5, 11, 17, 23, 29]
    assert c == PRESETS["4b"].replace(eos_token_ids=(1,))


def test_transformers5_rope_parameters_and_explicit_layer_types():
    d = dict(CONFIG_270M, layer_types=[SLIDING, GLOBAL] * 9,
             rope_parameters={SLIDING: {"rope_type": "default", "rope_theta": 5000.0},
                              GLOBAL: {"rope_type": "linear", "factor": 4.0, "rope_theta": 2e6}})
    c = GemmaConfig.from_hf_dict(d)
    assert c.layer_types == tuple([SLIDING, GLOBAL] * 9)
    assert c.rope_local == RopeConfig(5000.0) and c.rope_global == RopeConfig(2e6, 4.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_through_hf_dict(name):
    c = PRESETS[name]
    assert GemmaConfig.from_hf_dict(json.loads(json.dumps(c.to_hf_dict()))) == c


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_transformers_reads_our_config_the_same_way(name):
    from transformers import Gemma3TextConfig

    c = PRESETS[name]
    hf = Gemma3TextConfig(**c.to_hf_dict())
    assert tuple(hf.layer_types) == c.layer_types
    assert hf.rope_parameters[SLIDING]["rope_theta"] == c.rope_local.theta
    assert hf.rope_parameters[GLOBAL]["rope_theta"] == c.rope_global.theta
    assert hf.rope_parameters[GLOBAL].get("factor", 1.0) == c.rope_global.factor
    assert hf.sliding_window == c.sliding_window and hf.query_pre_attn_scalar == c.query_pre_attn_scalar


def test_invalid_configs_are_named():
    with pytest.raises(GemmaEdgeError, match="not a multiple of num_key_value_heads"):
        GemmaConfig.from_hf_dict(dict(CONFIG_270M, num_key_value_heads=3))
    with pytest.raises(GemmaEdgeError, match="layer_types has 2 entries for 18 layers"):
        GemmaConfig.from_hf_dict(dict(CONFIG_270M, layer_types=[SLIDING, GLOBAL]))
    with pytest.raises(GemmaEdgeError, match="Gemma 3 has no attention soft-cap"):
        GemmaConfig.from_hf_dict(dict(CONFIG_270M, attn_logit_softcapping=50.0))
    with pytest.raises(GemmaEdgeError, match="RoPE scaling 'yarn' is not supported"):
        GemmaConfig.from_hf_dict(dict(CONFIG_270M, rope_scaling={"rope_type": "yarn", "factor": 2.0}))

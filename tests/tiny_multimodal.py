"""A tiny random Gemma 3 multimodal checkpoint in HF layout (built with transformers) and prompt helpers,
shared by the vision tests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from gemma_edge.model import GLOBAL, SLIDING
from gemma_edge.model.tiny import tiny_config
from gemma_edge.model.tokenizer import tiny_tokenizer_model

TOKENS_PER_IMAGE = 16  # 8x8 patches pooled 2x2: more than the tiny decoder's sliding window of 8


def write_tiny_multimodal(folder, seed: int = 0) -> dict:
    """A random Gemma3ForConditionalGeneration saved in HF layout; returns the special token ids."""
    text = tiny_config(num_layers=2, layer_types=(SLIDING, GLOBAL)).to_hf_dict()  # both cache kinds, quick to lower
    vocab = text["vocab_size"]
    ids = {"<start_of_image>": vocab, "<end_of_image>": vocab + 1, "<image_soft_token>": vocab + 2}
    text.update(vocab_size=vocab + 3, model_type="gemma3_text")
    text.pop("architectures")
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, image_size=32, patch_size=4, vision_use_head=False)
    import transformers  # test-only dependency

    config = transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"])
    torch.manual_seed(seed)
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            else:  # norms and biases: (1 + w) and LayerNorm's w both exercised away from their init
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if "layer_norm" in name else 0.0))
    model.save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(tiny_tokenizer_model())
    return ids


def photo(height: int, width: int, seed: int) -> Image.Image:
    """Random RGB noise: every pixel matters to the vision tower."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def exported_tiny(tmp_path_factory, name: str, export, max_seq_len: int):
    """A tiny multimodal checkpoint and its export by `export(source, out, max_seq_len=...)`:
    (checkpoint folder, export folder, special token ids)."""
    root = tmp_path_factory.mktemp(name)
    ids = write_tiny_multimodal(root / "ckpt")
    export(root / "ckpt", root / "out", max_seq_len=max_seq_len)
    return root / "ckpt", root / "out", ids


def two_image_prompt(folder, max_seq_len: int):
    """Two images, the second with three Pan & Scan crops (five runs of soft tokens): the reference, its
    encoder, the pixels and the prompt's token ids."""
    from gemma_edge.model import load
    from gemma_edge.model.image_processing import ImageSettings, preprocess, prompt_ids
    from gemma_edge.model.loader import load_vision

    loaded = load(folder, max_seq_len=max_seq_len)
    pixels, crops = preprocess([photo(30, 34, 5), photo(20, 60, 6)],
                               ImageSettings(size=32, pan_and_scan=True, min_crop_size=8))
    assert crops == [0, 3]
    encoder = load_vision(folder)
    tokens = prompt_ids("look <start_of_image> then <start_of_image> what?", crops, loaded.tokenizer, encoder.config)
    return loaded, encoder, pixels, tokens

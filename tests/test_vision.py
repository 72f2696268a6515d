"""Gemma 3's image path against transformers: the SigLIP tower, the projector, the decoder's bidirectional
image attention (tiny random multimodal checkpoints) and the Pillow preprocessing (real photographs)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from skimage import data as skimage_data

from gemma_edge.model import GemmaEdgeError, ReferenceRunner, StreamDecoder, generate, load
from gemma_edge.model.gemma import image_groups
from gemma_edge.model.image_processing import (ImageSettings, expand_image_tokens, pan_and_scan_boxes, preprocess,
                                               prompt_ids)
from gemma_edge.model.loader import load_vision
from tiny_multimodal import TOKENS_PER_IMAGE, photo, write_tiny_multimodal


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-mm")
    ids = write_tiny_multimodal(folder)
    hf = transformers.Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, ids, hf


def _hf_logits(hf, ids: list[int], pixels: torch.Tensor | None, image_id: int) -> torch.Tensor:
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        return hf(input_ids=input_ids, pixel_values=pixels, token_type_ids=(input_ids == image_id).long(),
                  use_cache=False).logits[0]


@pytest.mark.parametrize("case", ["one image", "two images", "pan and scan"])
def test_image_text_logits_equal_transformers(multimodal, case):
    folder, ids, hf = multimodal
    loaded = load(folder, max_seq_len=256)
    encoder = load_vision(folder)
    settings = ImageSettings(size=32, pan_and_scan=case == "pan and scan", min_crop_size=8)
    images = {"one image": [photo(40, 40, 1)], "two images": [photo(30, 50, 2), photo(64, 16, 3)],
              "pan and scan": [photo(20, 60, 4)]}[case]
    prompt = " then ".join(["look <start_of_image>"] * len(images)) + " what is it?"
    pixels, crops = preprocess(images, settings)
    assert (crops == [3]) if case == "pan and scan" else (crops == [0] * len(images))
    tokens = prompt_ids(prompt, crops, loaded.tokenizer, encoder.config)
    n = len(tokens)
    assert tokens.count(ids["<image_soft_token>"]) == TOKENS_PER_IMAGE * pixels.shape[0]

    with torch.no_grad():
        features = encoder(pixels)
        ours = loaded.model(torch.tensor([tokens]), torch.arange(n), image_features=features)[0]
    expected = _hf_logits(hf, tokens, pixels, ids["<image_soft_token>"])
    assert features.shape == (pixels.shape[0], TOKENS_PER_IMAGE, loaded.config.hidden_size)
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-4)

    # Text decoded after the image prompt, through the caches, continues the same sequence.
    extra = loaded.tokenizer.encode(" a cat", add_bos=False)
    with torch.no_grad():
        steps = [loaded.model(torch.tensor([[t]]), torch.tensor([n + i]))[0, -1] for i, t in enumerate(extra)]
    expected = _hf_logits(hf, tokens + extra, pixels, ids["<image_soft_token>"])[n:]
    torch.testing.assert_close(torch.stack(steps), expected, atol=2e-4, rtol=1e-4)


def test_image_tokens_attend_bidirectionally(multimodal):
    """A change to the last soft token of an image moves the logits at the image's first token (which a
    causal mask would hide) and nothing before the image."""
    folder, ids, _ = multimodal
    model = load(folder, max_seq_len=64).model
    img = ids["<image_soft_token>"]
    tokens = torch.tensor([[2, 40, ids["<start_of_image>"]] + [img] * TOKENS_PER_IMAGE + [ids["<end_of_image>"], 41]])
    features = torch.randn(1, TOKENS_PER_IMAGE, model.config.hidden_size)
    changed = features.clone()
    changed[0, -1] += 1.0
    pos = torch.arange(tokens.shape[1])
    with torch.no_grad():
        a = model(tokens, pos, image_features=features)[0]
        model.reset_caches()
        b = model(tokens, pos, image_features=changed)[0]
    first_image = 3
    assert torch.equal(a[:first_image], b[:first_image])
    assert (a[first_image] - b[first_image]).abs().max() > 1e-3


def test_image_groups_number_each_run():
    img = 9
    tokens = torch.tensor([1, img, img, 5, img, 7, img, img, img])
    assert image_groups(tokens == img).tolist() == [-1, 0, 0, -1, 1, -1, 2, 2, 2]


def test_placeholder_count_must_match_images(multimodal):
    folder, ids, _ = multimodal
    model = load(folder, max_seq_len=64).model
    tokens = torch.tensor([[2] + [ids["<image_soft_token>"]] * (TOKENS_PER_IMAGE - 1)])
    with pytest.raises(GemmaEdgeError, match="image soft tokens"):
        model(tokens, torch.arange(tokens.shape[1]), image_features=torch.zeros(1, TOKENS_PER_IMAGE, 64))


def test_text_only_checkpoint_has_no_vision(tiny_dir):
    with pytest.raises(GemmaEdgeError, match="no vision_config"):
        load_vision(tiny_dir)


def test_prompt_expansion_equals_the_hf_processor():
    """Our pieces joined are the string Gemma3Processor builds (its replace_image_token per image)."""
    from transformers.models.gemma3.processing_gemma3 import Gemma3Processor

    full = "\n\n<start_of_image>" + "<image_soft_token>" * 4 + "<end_of_image>\n\n"
    fake = types.SimpleNamespace(full_image_sequence=full)
    prompt = "A <start_of_image> and B <start_of_image>?"
    crops = [0, 2]
    parts = prompt.split("<start_of_image>")
    expected = parts[0] + "".join(Gemma3Processor.replace_image_token(fake, {"num_crops": crops}, i) + parts[i + 1]
                                  for i in range(len(crops)))
    assert "".join(expand_image_tokens(prompt, crops, 4)) == expected
    with pytest.raises(GemmaEdgeError, match="2 <start_of_image> markers for 1 images"):
        expand_image_tokens(prompt, [0], 4)


# --- preprocessing on real photographs ----------------------------------------------------------------

def _photographs() -> dict[str, Image.Image]:
    rocket = skimage_data.rocket()
    return {
        "astronaut 512x512": Image.fromarray(skimage_data.astronaut()),
        "chelsea 300x451": Image.fromarray(skimage_data.chelsea()),
        "coffee 400x600": Image.fromarray(skimage_data.coffee()),
        "rocket 427x640": Image.fromarray(rocket),
        "rocket portrait 640x427": Image.fromarray(np.ascontiguousarray(rocket.transpose(1, 0, 2))),
        "camera grey 512x512": Image.fromarray(skimage_data.camera()),
        "hubble 872x1000": Image.fromarray(skimage_data.hubble_deep_field()),
        "coffee strip 200x600": Image.fromarray(skimage_data.coffee()[:200]),
        "astronaut tall 512x128": Image.fromarray(np.ascontiguousarray(skimage_data.astronaut()[:, :128])),
        "astronaut panorama 512x1536": Image.fromarray(np.concatenate([skimage_data.astronaut()] * 3, axis=1)),
        "coffee panorama 400x3000": Image.fromarray(np.concatenate([skimage_data.coffee()] * 5, axis=1)),
        "chelsea column 900x451": Image.fromarray(np.concatenate([skimage_data.chelsea()] * 3, axis=0)),
    }


@pytest.mark.parametrize("pan_and_scan", [False, True])
def test_preprocessing_equals_gemma3_image_processor(pan_and_scan):
    from transformers import Gemma3ImageProcessor

    hf = Gemma3ImageProcessor(size={"height": 896, "width": 896}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                              resample=2, do_pan_and_scan=pan_and_scan, pan_and_scan_min_crop_size=256,
                              pan_and_scan_max_num_crops=4, pan_and_scan_min_ratio_to_activate=1.2)
    settings = ImageSettings(pan_and_scan=pan_and_scan)
    seen_crops = []
    for name, image in _photographs().items():
        expected = hf(images=[image], return_tensors="np")
        pixels, crops = preprocess([image], settings)
        assert crops == list(expected["num_crops"]), name
        assert pixels.shape == expected["pixel_values"].shape, name
        np.testing.assert_array_equal(pixels.numpy(), expected["pixel_values"], err_msg=name)
        seen_crops += crops
    if pan_and_scan:  # the set covers no crops, two, and the cap of four
        assert {0, 2, 3, 4} <= set(seen_crops), seen_crops


def test_pan_and_scan_counts_by_hand():
    s = ImageSettings()
    assert pan_and_scan_boxes(400, 600, s) == [(0, 0, 400, 300), (0, 300, 400, 600)]
    assert pan_and_scan_boxes(300, 451, s) == []  # two crops would be 226 px wide, under 256
    assert pan_and_scan_boxes(500, 500, s) == []  # square: below the 1.2 ratio
    assert len(pan_and_scan_boxes(256, 2560, s)) == 4  # ratio 10, capped at 4
    assert pan_and_scan_boxes(900, 300, s) == [(0, 0, 300, 300), (300, 0, 600, 300), (600, 0, 900, 300)]


def test_transparency_composites_onto_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    pixels, _ = preprocess([rgba], ImageSettings(size=8))
    assert torch.equal(pixels, torch.ones(1, 3, 8, 8))  # white is (1 - 0.5) / 0.5


def test_run_with_images_generates_transformers_greedy_tokens(multimodal, tmp_path):
    """`gemma-edge run MODEL --image A B --prompt` streams the tokens HF's generate picks for the same
    pixels and prompt (built independently here with the HF processor's layout)."""
    import subprocess
    import sys

    folder, ids, hf = multimodal
    files = []
    for i, (h, w) in enumerate([(40, 24), (24, 24)]):
        files.append(tmp_path / f"img{i}.png")
        photo(h, w, 10 + i).save(files[-1])
    prompt = "first <start_of_image> second <start_of_image> answer:"
    out = subprocess.run([sys.executable, "-m", "gemma_edge.cli.main", "run", str(folder), "--image", *map(str, files),
                          "--prompt", prompt, "--max-new-tokens", "6", "--max-seq-len", "256"],
                         capture_output=True, text=True, check=True).stdout

    loaded = load(folder, max_seq_len=256)
    pixels, crops = preprocess([Image.open(f) for f in files], ImageSettings(size=32))
    encoder = load_vision(folder)
    tokens = prompt_ids(prompt, crops, loaded.tokenizer, encoder.config)
    input_ids = torch.tensor([tokens])
    with torch.no_grad():
        new = hf.generate(input_ids=input_ids, pixel_values=pixels, token_type_ids=(input_ids == ids["<image_soft_token>"]).long(),
                          max_new_tokens=6, do_sample=False, eos_token_id=None)[0, len(tokens):].tolist()
    stops = set(loaded.tokenizer.stop_ids)
    new = new[:next((i + 1 for i, t in enumerate(new) if t in stops), len(new))]
    stream = StreamDecoder(loaded.tokenizer)
    assert out == prompt + "".join(stream.push(t) for t in new if t not in stops) + "\n"

    runner = ReferenceRunner(loaded.model, encoder(pixels).detach())
    assert len(new) >= 3 and generate(runner, tokens, 6, stop_ids=stops) == new

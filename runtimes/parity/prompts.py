"""The prompts parity runs: defaults (text, code, chat, a passage past the window), a file, a test card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from gemma_edge.model.errors import GemmaEdgeError

from .. import artifact_vision

if TYPE_CHECKING:
    import torch
    from PIL import Image


def default_prompts(tokenizer, window: int, max_len: int | None = None) -> list[tuple[str, list[int]]]:
    """Three short prompts (text, code, chat) and one natural passage longer than the sliding window (cut
    to `max_len` tokens where the artifact's context is shorter)."""
    from gemma_edge.calibration.data import held_out_text
    from gemma_edge.model import format_chat

    texts = [("text", "The quick brown fox"), ("code", "def fibonacci(n):\n    "),
             ("chat", format_chat([{"role": "user", "content": "Name three rivers in Europe."}]))]
    out = [(name, tokenizer.encode(t)) for name, t in texts]
    length = window + 64 if max_len is None else min(window + 64, max_len)
    name = f"passage > window ({length} tokens)" if length > window else f"passage ({length} tokens: the context)"
    out.append((name, tokenizer.encode(held_out_text())[:length]))
    return out


def describe_images(count: int) -> str:
    """The default image prompt's text, with `count` images."""
    return "Describe " + "<start_of_image>" * count + " in one sentence."


def colour_bar_card(width: int = 640, height: int = 360) -> "Image.Image":
    """A deterministic 16:9 picture (colour bars over a grey ramp, a dark disc) for the default image prompt."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    bars = np.array([[235, 235, 235], [235, 235, 16], [16, 235, 235], [16, 235, 16], [235, 16, 235], [235, 16, 16],
                     [16, 16, 235]], dtype=np.float64)[x * 7 // width]
    ramp = (x / (width - 1) * 255)[..., None].repeat(3, -1)
    picture = np.where((y < height * 2 // 3)[..., None], bars, ramp)
    disc = (x - width * 0.7) ** 2 + (y - height * 0.4) ** 2 < (height * 0.18) ** 2
    picture[disc] = (40, 30, 20)
    return Image.fromarray(picture.astype(np.uint8))


def image_prompt_for(folder: str | Path, text: str, images: Sequence, pan_and_scan: bool = False,
                     name: str = "image prompt") -> tuple[str, list[int], torch.Tensor]:
    """(name, token ids, pixels) of an image+text prompt, preprocessed as the artifact's manifest records
    (size, mean, std, tokens per image, token ids): `<start_of_image>` in `text` marks each image."""
    from types import SimpleNamespace

    from gemma_edge.model import Tokenizer
    from gemma_edge.model.image_processing import ImageSettings, image_prompt

    folder = Path(folder)
    meta = artifact_vision(folder)
    if meta is None:
        raise GemmaEdgeError(f"{folder}: a text-only artifact takes no images; export a multimodal (4B+) "
                             "checkpoint without --text-only")
    settings = ImageSettings(size=meta["image_size"], mean=tuple(meta["image_mean"]), std=tuple(meta["image_std"]),
                             pan_and_scan=pan_and_scan)
    ids = SimpleNamespace(boi_token_id=meta["boi_token_id"], eoi_token_id=meta["eoi_token_id"],
                          image_token_id=meta["image_token_id"], mm_tokens_per_image=meta["tokens_per_image"])
    tokens, pixels = image_prompt(text, images, settings, Tokenizer.from_file(folder / "tokenizer.model"), ids)
    return name, tokens, pixels


def prompts_from_file(path: str | Path, tokenizer) -> list[tuple[str, list[int]]]:
    """A JSON list of prompt strings."""
    path = Path(path)
    try:
        prompts = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise GemmaEdgeError(f"{path}: not a readable JSON list of prompt strings ({e})") from None
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise GemmaEdgeError(f"{path}: expected a non-empty JSON list of prompt strings")
    return [(f"prompt {i + 1}", tokenizer.encode(p)) for i, p in enumerate(prompts)]

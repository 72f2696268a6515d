"""Images -> the vision tower's pixel values, and the prompt's image placeholders (Gemma 3, 4B+).

Each image is converted to RGB (transparency onto white), resized to the tower's square input with
bilinear filtering, scaled to [0, 1] and normalised with the checkpoint's mean and std — what
transformers' `Gemma3ImageProcessor` does with Pillow. Pan & Scan (off by default, as in the HF
processor) adds crops of a non-square image: the crop count follows the aspect ratio (rounded), at least
2 and at most `max_crops`, each crop at least `min_crop_size` pixels, and only when the long side is at
least `min_ratio` times the short one. The original image comes first, then its crops; each becomes
its own 256 soft tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import GemmaEdgeError

BOI = "<start_of_image>"


@dataclass(frozen=True)
class ImageSettings:
    """Preprocessing of one checkpoint: its `preprocessor_config.json` and the processor's Pan & Scan."""

    size: int = 896
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pan_and_scan: bool = False
    min_crop_size: int = 256
    max_crops: int = 4
    min_ratio: float = 1.2


def open_image(path: str | Path):
    """A Pillow image, or a one-line error naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise GemmaEdgeError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise GemmaEdgeError(f"{path}: not an image Pillow can read ({e}); pass a PNG or JPEG") from None


def to_rgb(image) -> np.ndarray:
    """[H, W, 3] uint8; alpha is composited onto white, as the HF processor does."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.array(image.convert("RGB"))


def pan_and_scan_boxes(height: int, width: int, s: ImageSettings) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of each crop, row by row; empty when the image is not elongated enough."""
    long, short = max(height, width), min(height, width)
    if long / short < s.min_ratio:
        return []
    crops = min(int(math.floor(long / short + 0.5)), int(math.floor(long / s.min_crop_size)))
    crops = min(s.max_crops, max(2, crops))
    crop_h = math.ceil(height / crops) if height > width else height
    crop_w = math.ceil(width / crops) if width >= height else width
    if min(crop_h, crop_w) < s.min_crop_size:
        return []
    if width >= height:
        return [(0, i * crop_w, crop_h, min(width, (i + 1) * crop_w)) for i in range(crops)]
    return [(i * crop_h, 0, min(height, (i + 1) * crop_h), crop_w) for i in range(crops)]


def _pixels(rgb: np.ndarray, s: ImageSettings) -> np.ndarray:
    """[H, W, 3] uint8 -> [3, size, size] float32: bilinear resize, /255, (x - mean) / std."""
    from PIL import Image

    resized = np.array(Image.fromarray(rgb).resize((s.size, s.size), resample=Image.Resampling.BILINEAR))
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(s.mean, dtype=np.float32)) / np.array(s.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(images: Sequence, settings: ImageSettings = ImageSettings()) -> tuple[torch.Tensor, list[int]]:
    """Pillow images -> pixel values [images + crops, 3, size, size] and the crop count of each image."""
    rows, crop_counts = [], []
    for image in images:
        rgb = to_rgb(image)
        boxes = pan_and_scan_boxes(*rgb.shape[:2], settings) if settings.pan_and_scan else []
        rows.append(_pixels(rgb, settings))
        rows.extend(_pixels(np.ascontiguousarray(rgb[t:b, l:r]), settings) for t, l, b, r in boxes)
        crop_counts.append(len(boxes))
    return torch.from_numpy(np.stack(rows)), crop_counts


def image_sequence(tokens_per_image: int) -> list[str]:
    """One image's place in the prompt, as the HF processor writes it: text and special-token pieces."""
    return ["\n\n", BOI] + ["<image_soft_token>"] * tokens_per_image + ["<end_of_image>", "\n\n"]


def expand_image_tokens(prompt: str, crop_counts: Sequence[int], tokens_per_image: int) -> list[str]:
    """Replace the i-th `<start_of_image>` of `prompt` by image i's full sequence (with its Pan & Scan
    crops), returning the prompt as pieces: plain text, or one of the three image special tokens."""
    parts = prompt.split(BOI)
    if len(parts) - 1 != len(crop_counts):
        raise GemmaEdgeError(f"the prompt has {len(parts) - 1} {BOI} markers for {len(crop_counts)} images; "
                             f"put one {BOI} where each image goes")
    pieces: list[str] = [parts[0]]
    one = image_sequence(tokens_per_image)
    for crops, text in zip(crop_counts, parts[1:]):
        if crops:
            pieces += ["Here is the original image ", *one, " and here are some crops to help you see better "]
            for i in range(crops):
                pieces += ([" "] if i else []) + one
        else:
            pieces += one
        pieces.append(text)
    return pieces


def encode_pieces(pieces: Sequence[str], encode_text, special_ids: dict[str, int], bos_id: int | None) -> list[int]:
    """Token ids of `expand_image_tokens`' pieces: special pieces map to their ids, and the text between
    two special pieces is encoded on its own (HF tokenizers split at special tokens the same way)."""
    ids = [] if bos_id is None else [bos_id]
    text = ""
    for piece in pieces:
        if piece in special_ids:
            ids += encode_text(text) if text else []
            ids.append(special_ids[piece])
            text = ""
        else:
            text += piece
    return ids + (encode_text(text) if text else [])


def settings_for(folder: str | Path, image_size: int, pan_and_scan: bool = False) -> ImageSettings:
    """The checkpoint's preprocessing: `preprocessor_config.json` when the folder has one (mean, std), the
    vision tower's input size, and Pan & Scan as asked."""
    import json

    path = Path(folder) / "preprocessor_config.json"
    d = {}
    if path.exists():
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise GemmaEdgeError(f"{path}: not valid JSON ({e}); restore it from the checkpoint") from None
    return ImageSettings(size=image_size, mean=tuple(d.get("image_mean", (0.5,) * 3)),
                         std=tuple(d.get("image_std", (0.5,) * 3)), pan_and_scan=pan_and_scan)


def prompt_ids(text: str, crop_counts: Sequence[int], tokenizer, vision_config) -> list[int]:
    """BOS + `text` with each `<start_of_image>` expanded (Pan & Scan crops included) and tokenized as the HF
    processor does; `vision_config` (`vision.VisionConfig`) gives the image token ids."""
    special = {BOI: vision_config.boi_token_id, "<end_of_image>": vision_config.eoi_token_id,
               "<image_soft_token>": vision_config.image_token_id}
    pieces = expand_image_tokens(text, crop_counts, vision_config.mm_tokens_per_image)
    return encode_pieces(pieces, lambda t: tokenizer.encode(t, add_bos=False), special, tokenizer.bos_id)


def image_prompt(text: str, images: Sequence, settings: ImageSettings, tokenizer, vision_config) -> tuple[list[int], torch.Tensor]:
    """Token ids (BOS first) and pixel values for a prompt with images. Each `<start_of_image>` in `text`
    marks where an image goes; a text with none gets the images before it."""
    if BOI not in text:
        text = BOI * len(images) + text
    pixels, crops = preprocess(images, settings)
    return prompt_ids(text, crops, tokenizer, vision_config), pixels


def prompt_segments(tokens: Sequence[int], image_token_id: int, tokens_per_image: int) -> list[list[int] | int]:
    """The prompt as ExecuTorch's MultimodalRunner takes it: runs of text token ids, and for each image
    (or crop) its index in the pixel batch, in prompt order."""
    segments: list[list[int] | int] = []
    i, image = 0, 0
    while i < len(tokens):
        if tokens[i] == image_token_id:
            run = tokens[i:i + tokens_per_image]
            if len(run) < tokens_per_image or any(t != image_token_id for t in run):
                raise GemmaEdgeError(f"image soft tokens at position {i} do not form a run of {tokens_per_image}; "
                                     "build the prompt with expand_image_tokens")
            segments.append(image)
            image += 1
            i += tokens_per_image
        else:
            j = i
            while j < len(tokens) and tokens[j] != image_token_id:
                j += 1
            segments.append(list(tokens[i:j]))
            i = j
    return segments

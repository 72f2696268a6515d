"""QuantRecipe: which format each weight gets, JSON round trip, and the named presets."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_edge.model.errors import GemmaEdgeError

from .formats import QuantFormat

FLOAT = "float"
EMBEDDING = "embed_tokens.weight"
LM_HEAD = "lm_head.weight"
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.")  # a multimodal checkpoint's image path
ACTIVATIONS = ("none", "int8_dynamic")
CLIPS = ("mse", "minmax")
ROUNDINGS = ("nearest", "gptq")


@dataclass(frozen=True)
class QuantRecipe:
    """`linear`: attention and MLP projections (the vision tower's too). `embedding`: the token table used for lookup.
    `lm_head`: the output projection (Gemma ties it to the embedding; it may still get its own format).
    `overrides`: glob over weight names -> format or "float" (e.g. keep one sensitive layer at int8).
    `activations`: "int8_dynamic" quantizes each linear's input per token at run time (8da4w).
    `rounding`: "nearest" rounds each weight to its grid; "gptq" re-rounds the integer grids of the
    projections and the LM head (a table shared with the lookup too) with GPTQ's error feedback from
    calibration activations (`gptq.py`)."""

    name: str
    linear: str
    embedding: str = FLOAT
    lm_head: str = FLOAT
    activations: str = "none"
    clip: str = "mse"
    overrides: dict[str, str] = field(default_factory=dict)
    rounding: str = "nearest"

    def __post_init__(self) -> None:
        for fmt in (self.linear, self.embedding, self.lm_head, *self.overrides.values()):
            if fmt != FLOAT:
                QuantFormat.parse(fmt)
        if self.activations not in ACTIVATIONS:
            raise GemmaEdgeError(f"recipe {self.name!r}: activations must be one of {ACTIVATIONS}")
        if self.clip not in CLIPS:
            raise GemmaEdgeError(f"recipe {self.name!r}: clip must be one of {CLIPS}")
        if self.rounding not in ROUNDINGS:
            raise GemmaEdgeError(f"recipe {self.name!r}: rounding must be one of {ROUNDINGS}")

    def format_for(self, name: str) -> QuantFormat | None:
        """The format of weight `name` (our names), None to keep it float. Norms are never quantized."""
        for pattern, fmt in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return None if fmt == FLOAT else QuantFormat.parse(fmt)
        if name == EMBEDDING:
            fmt = self.embedding
        elif name == LM_HEAD:
            fmt = self.lm_head
        elif name.endswith(("_proj.weight", ".fc1.weight", ".fc2.weight")):  # (fc1/fc2: the vision tower's MLP)
            fmt = self.linear
        else:
            return None
        return None if fmt == FLOAT else QuantFormat.parse(fmt)

    def check_overrides(self, names: list[str]) -> None:
        """Every override must match at least one tensor: a typo must not silently keep a layer float."""
        for pattern in self.overrides:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise GemmaEdgeError(f"recipe {self.name!r}: override {pattern!r} matches no tensor "
                                     f"(names look like {names[1]!r})")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.rounding == "nearest":  # recipes written before GPTQ existed stay byte-identical
            del d["rounding"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantRecipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GemmaEdgeError(f"recipe has unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, name_or_path: str | Path) -> "QuantRecipe":
        """A preset name or a JSON file."""
        if str(name_or_path) in PRESETS:
            return PRESETS[str(name_or_path)]
        path = Path(name_or_path)
        if not path.is_file():
            raise GemmaEdgeError(f"{path}: not a recipe preset ({', '.join(PRESETS)}) nor a recipe JSON file")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise GemmaEdgeError(f"{path}: not valid JSON ({e})") from None
        except TypeError as e:
            raise GemmaEdgeError(f"{path}: incomplete recipe ({e})") from None


# Integer presets round with GPTQ (when calibration sequences exist): it wins on every held-out domain once the
# data-free samples span several languages (docs/quantization.md); fp8 has no integer grid to re-round.
PRESETS: dict[str, QuantRecipe] = {r.name: r for r in [
    QuantRecipe("int4-block32", linear="int4_block32", embedding="int8_channel", lm_head="int4_block32",
                rounding="gptq"),
    QuantRecipe("int4-block32-emb4", linear="int4_block32", embedding="int4_block32", lm_head="int4_block32",
                rounding="gptq"),
    QuantRecipe("int4-channel", linear="int4_channel", embedding="int8_channel", lm_head="int4_channel",
                rounding="gptq"),
    QuantRecipe("fp8", linear="fp8_e4m3", embedding="fp8_e4m3", lm_head="fp8_e4m3"),
    QuantRecipe("8da4w", linear="int4_block32", embedding="int8_channel", lm_head="int4_block32",
                activations="int8_dynamic", rounding="gptq"),
    QuantRecipe("int8-block32", linear="int8_block32", embedding="int8_block32", lm_head="int8_block32",
                rounding="gptq"),
]}

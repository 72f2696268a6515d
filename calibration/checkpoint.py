"""QuantizedCheckpoint: the hand-off between calibration and every exporter.

A folder: `model.safetensors` (per quantized weight `NAME.qdata` — int4 packed two per byte, int8, fp8 or
SFP8 codes — `NAME.scale` in bf16 and `NAME.zero_point` when asymmetric; float tensors as `NAME`),
`recipe.json`, `config.json`, `tokenizer.model` and `quant_report.json` (every tensor and its format).
Loading it gives the integers and scales back bit for bit, and a *quantized reference* model: the float
architecture with dequantized weights and, for 8da4w, simulated per-token int8 activations.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn

from gemma_edge.model.atomic import atomic_dir
from gemma_edge.model.config import GemmaConfig
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.gemma import Gemma
from gemma_edge.model.hf_checkpoint import load_weights, materialize, read_safetensors, save_safetensors_streamed
from gemma_edge.model.loader import FolderKind, LoadedModel
from gemma_edge.model.swap import swap_modules
from gemma_edge.model.tokenizer import Tokenizer
from gemma_edge.model.vision import VisionConfig, VisionEncoder

from .formats import QTensor, QuantFormat, StoredQTensor
from .recipe import EMBEDDING, LM_HEAD, VISION_PREFIXES, QuantRecipe

FORMAT_TAG = "gemma-edge-quantized-v1"


def is_vision(name: str) -> bool:
    return name.startswith(VISION_PREFIXES)


def tensors_for(vision: bool) -> Callable[[str], bool]:
    """`QuantizedCheckpoint.load(only=)` for an export: every tensor with the tower, else the decoder's."""
    return (lambda name: True) if vision else (lambda name: not is_vision(name))


def is_quantized_checkpoint(path: Path) -> bool:
    """The one test for a QuantizedCheckpoint folder: it has the recipe it was made with."""
    return Path(path).is_dir() and (Path(path) / "recipe.json").exists()


@dataclass
class QuantizedCheckpoint:
    config: GemmaConfig
    recipe: QuantRecipe
    quantized: dict[str, QTensor]  # StoredQTensor values when loaded with unpack=False (read-only use)
    floats: dict[str, torch.Tensor]
    tokenizer_model: bytes | None = None
    report: list[dict] = field(default_factory=list)
    source: str | None = None  # the float checkpoint it came from (source.json): `parity --against float`
    provenance: dict | None = None  # how the integers were made beyond PTQ (QAT settings, import) -> provenance.json
    multimodal_config: dict | None = None  # a 4B+ source's config.json: its vision tower is in the tensors

    @property
    def separate_lm_head(self) -> bool:
        return LM_HEAD in self.quantized or LM_HEAD in self.floats

    def dequantized_state(self, vision: bool = False) -> dict[str, torch.Tensor]:
        """The decoder's tensors (or with `vision`, the vision tower's and projector's) as float."""
        state = {k: v for k, v in self.floats.items() if is_vision(k) == vision}
        state.update({k: q.dequantize() for k, q in self.quantized.items() if is_vision(k) == vision})
        return state

    # ---- the quantized reference -----------------------------------------------------------------
    def build_model(self, max_seq_len: int | None = None, dtype: torch.dtype = torch.float32,
                    activations: str | None = None, activation_blocks: dict[str, int] | None = None,
                    lazy: bool = False) -> Gemma:
        """The quantized reference. `activations` overrides the recipe's, to mirror a runtime that
        quantizes activations itself: "int8_dynamic" (XNNPACK runs every int4 linear on int8 per-token
        activations) or "int8_block" (onnxruntime's MatMulNBits at accuracy_level 4: int8 per block of the
        weight, for the weights named in `activation_blocks`, an ONNX manifest's record).
        `lazy`: keep the integers and dequantize each weight when its module runs (`dequantize_on_call`):
        the same values and logits with a quarter of the memory, slower per call (for 1B and up)."""
        if lazy:
            return self._build_lazy(max_seq_len, dtype, activations, activation_blocks)
        state = {k: v.to(dtype) for k, v in self.dequantized_state().items()}
        head = state.pop(LM_HEAD, None)
        model = load_weights(lambda: Gemma(self.config, max_seq_len=max_seq_len, dtype=dtype), state,
                             Path("quantized checkpoint"))
        del state
        if head is not None:  # tied in the float model, but the LM head has its own format
            model.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False, device="meta")
            model.lm_head.weight = nn.Parameter(head)
        _simulate_activations(model, activations or self.recipe.activations, activation_blocks)
        return model.eval()

    def _build_lazy(self, max_seq_len, dtype, activations, activation_blocks) -> Gemma:
        """`build_model(lazy=True)`: the modules of quantized weights hold meta placeholders between calls."""
        decoder = {k: q for k, q in self.quantized.items() if not is_vision(k)}
        with torch.device("meta"):
            model = Gemma(self.config, max_seq_len=max_seq_len, dtype=dtype)
            if LM_HEAD in decoder or LM_HEAD in self.floats:  # the head has its own format
                model.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False, dtype=dtype)
        floats = {k: v.to(dtype) for k, v in self.floats.items() if not is_vision(k)}
        materialize(model, floats, placeholders=set(decoder))
        _simulate_activations(model, activations or self.recipe.activations, activation_blocks)
        if model.lm_head is None and EMBEDDING in decoder:  # a tied head: the table's integers, as a linear
            with torch.device("meta"):
                model.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False, dtype=dtype)
        if EMBEDDING in decoder and LM_HEAD not in decoder and LM_HEAD not in self.floats:
            decoder[LM_HEAD] = decoder[EMBEDDING]
        dequantize_on_call(model, decoder, dtype)
        return model.eval()

    def build_vision(self, dtype: torch.dtype = torch.float32, activations: str | None = None,
                     activation_blocks: dict[str, int] | None = None, lazy: bool = False) -> VisionEncoder:
        """The quantized vision reference: the SigLIP tower and projector with dequantized weights (and
        int8 inputs to its quantized linears for `activations`, as in `build_model`). `lazy` as there: the
        4B's tower is 1.7 GB of floats, 0.2 GB of stored integers."""
        config = VisionConfig.from_hf_dict(self.multimodal_config or {})
        if config is None:
            raise GemmaEdgeError("this quantized checkpoint carries no vision tower; quantize the multimodal "
                                 "(4B+) HF folder to get one")
        if lazy:
            quantized = {k: q for k, q in self.quantized.items() if is_vision(k)}
            with torch.device("meta"):
                encoder = VisionEncoder(config).to(dtype)
            materialize(encoder, {k: v.to(dtype) for k, v in self.floats.items() if is_vision(k)},
                        placeholders=set(quantized))
        else:
            encoder = load_weights(lambda: VisionEncoder(config).to(dtype),
                                   {k: v.to(dtype) for k, v in self.dequantized_state(vision=True).items()},
                                   Path("quantized checkpoint"))
        _simulate_activations(encoder, activations or self.recipe.activations, activation_blocks, set(self.quantized))
        if lazy:
            dequantize_on_call(encoder, quantized, dtype)
        return encoder.eval()

    # ---- storage ---------------------------------------------------------------------------------
    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        """Each stored tensor is packed when the writer reaches it (`save_safetensors_streamed`): the
        packed copy of every weight and its bytes never sit in memory beside the integers (6 GB at 4B)."""
        make: dict[str, Callable[[str], torch.Tensor]] = {}
        formats: dict[str, str] = {}
        for name, q in sorted(self.quantized.items()):
            formats[name] = q.fmt.name
            make[f"{name}.qdata"] = lambda device, q=q: q.fmt.pack(q.qdata.to(device))
            if q.scale is not None:
                make[f"{name}.scale"] = lambda device, q=q: q.scale.to(device, torch.bfloat16)
            if q.zero_point is not None:
                make[f"{name}.zero_point"] = lambda device, q=q: q.zero_point.to(device)
        for name, t in sorted(self.floats.items()):
            make[name] = lambda device, t=t: t.to(device, torch.float32)
        # One metadata key: safetensors writes its metadata map in no fixed order, and artifacts must be
        # byte-identical run to run.
        meta = {"gemma_edge": json.dumps({"format": FORMAT_TAG, "quantized": formats}, sort_keys=True)}
        with atomic_dir(out, overwrite=overwrite, inputs=[self.source]) as tmp:
            save_safetensors_streamed(make, tmp / "model.safetensors", metadata=meta)
            (tmp / "config.json").write_text(json.dumps(self.config.to_hf_dict(), indent=2, sort_keys=True) + "\n")
            self.recipe.save(tmp / "recipe.json")
            (tmp / "quant_report.json").write_text(json.dumps(self.report, indent=2, sort_keys=True) + "\n")
            if self.source is not None:
                (tmp / "source.json").write_text(json.dumps({"path": self.source}) + "\n")
            if self.provenance is not None:
                (tmp / "provenance.json").write_text(json.dumps(self.provenance, indent=2, sort_keys=True) + "\n")
            if self.multimodal_config is not None:
                (tmp / "multimodal_config.json").write_text(
                    json.dumps(self.multimodal_config, indent=2, sort_keys=True) + "\n")
            if self.tokenizer_model is not None:
                (tmp / "tokenizer.model").write_bytes(self.tokenizer_model)
        return Path(out)

    @classmethod
    def load(cls, path: str | Path, unpack: bool = True,
             only: Callable[[str], bool] = lambda name: True) -> "QuantizedCheckpoint":
        """`unpack=False`: the quantized weights as `StoredQTensor`s (int4 two per byte), for a reader that
        unpacks rows as it goes (`load_quantized`'s reference); `only`: the weights whose names it accepts
        (`is_vision`: the tower alone). Such a checkpoint is for reading, not for saving again."""
        path = Path(path)
        config = GemmaConfig.from_json_file(path / "config.json")
        recipe = QuantRecipe.load(path / "recipe.json")
        weights = path / "model.safetensors"
        try:
            with safe_open(str(weights), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("gemma_edge", "{}"))
            if meta.get("format") != FORMAT_TAG:
                raise GemmaEdgeError(f"{weights}: not a gemma-edge quantized checkpoint "
                                     f"(format {meta.get('format')!r}); make one with gemma-edge quantize")
            formats = {name: QuantFormat.parse(f) for name, f in meta["quantized"].items() if only(name)}
            parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in formats}
            floats = {}

            def part_of(key: str) -> tuple[str, str]:
                """(weight name, "qdata" | "scale" | "zero_point") for a quantized weight's tensor, else (key, "")."""
                name, _, part = key.rpartition(".")
                return (name, part) if name in meta["quantized"] else (key, "")

            def wanted(key: str) -> bool:
                name, part = part_of(key)
                return name in formats if part else only(key)

            for key, tensor in read_safetensors(weights, wanted):  # plain reads: no memory map held
                name, part = part_of(key)
                if part:
                    if unpack and part == "qdata":  # a QTensor: one integer per byte, float32 scales
                        tensor = formats[name].unpack(tensor)
                    elif unpack and part == "scale":
                        tensor = tensor.float()
                    parts[name][part] = tensor
                else:
                    floats[key] = tensor
            quantized = {name: (QTensor if unpack else StoredQTensor)(
                formats[name], p["qdata"], p.get("scale"), p.get("zero_point")) for name, p in parts.items()}
            floats = dict(sorted(floats.items()))
        except FileNotFoundError:
            raise GemmaEdgeError(f"{weights}: missing; the quantized checkpoint is incomplete") from None
        except (SafetensorError, ValueError, KeyError) as e:
            raise GemmaEdgeError(f"{weights}: truncated or corrupt ({e}); quantize again") from None
        tok = path / "tokenizer.model"
        report_file = path / "quant_report.json"
        report = json.loads(report_file.read_text()) if report_file.exists() else []
        source_file = path / "source.json"
        source = json.loads(source_file.read_text())["path"] if source_file.exists() else None
        prov_file = path / "provenance.json"
        provenance = json.loads(prov_file.read_text()) if prov_file.exists() else None
        mm_file = path / "multimodal_config.json"
        multimodal = json.loads(mm_file.read_text()) if mm_file.exists() else None
        return cls(config, recipe, quantized, floats, tok.read_bytes() if tok.exists() else None, report, source,
                   provenance, multimodal)


# Rows of a lazily dequantized weight applied at a time (the 262,144-row head is 1.2 GB of floats at 1B).
LAZY_ROWS = 16384


def dequantize_on_call(model: nn.Module, quantized: dict[str, QTensor], dtype: torch.dtype) -> None:
    """Each module whose weight is in `quantized` (by `NAME.weight`) holds a meta placeholder; a linear's
    weight is dequantized just before each call and dropped after it (one of more than LAZY_ROWS rows, the
    LM head, LAZY_ROWS rows at a time), an embedding gathers the integer rows it needs and dequantizes
    those (every format's scales are per row, so the values are the full dequantization's)."""
    for name, module in list(model.named_modules()):
        q = quantized.get(f"{name}.weight")
        if q is None:
            continue
        if isinstance(module, nn.Embedding):
            model.set_submodule(name, RowDequantizedEmbedding(q, dtype))
        elif isinstance(module, nn.Linear) and module.bias is None and q.shape[0] > LAZY_ROWS:
            model.set_submodule(name, RowChunkedLinear(module, q, dtype))
        elif isinstance(module, nn.Linear):
            placeholder = module.weight
            module.register_forward_pre_hook(
                lambda m, args, q=q: m._parameters.__setitem__("weight", nn.Parameter(q.dequantize().to(dtype),
                                                                                     requires_grad=False)))
            module.register_forward_hook(
                lambda m, args, out, p=placeholder: m._parameters.__setitem__("weight", p))


class RowChunkedLinear(nn.Module):
    """A bias-free linear over a quantized weight of many rows (the LM head), applied LAZY_ROWS output rows
    at a time by the wrapped module itself (its activation numerics included). Each output is the same dot
    product as in one call; BLAS may sum it in another order for another number of rows, so the logits
    agree to float rounding (bit for bit at the 270M's, 1B's and 4B's head shapes on this host)."""

    def __init__(self, linear: nn.Linear, q: QTensor, dtype: torch.dtype):
        super().__init__()
        self.linear, self.q, self.dtype = linear, q, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        placeholder, outs = self.linear.weight, []
        for start in range(0, self.q.shape[0], LAZY_ROWS):
            w = self.q.rows(slice(start, start + LAZY_ROWS)).dequantize().to(self.dtype)
            self.linear._parameters["weight"] = nn.Parameter(w, requires_grad=False)
            outs.append(self.linear(x))
        self.linear._parameters["weight"] = placeholder
        return torch.cat(outs, dim=-1)


class RowDequantizedEmbedding(nn.Module):
    """An embedding that keeps its table as integers: ids -> their rows, dequantized."""

    def __init__(self, q: QTensor, dtype: torch.dtype):
        super().__init__()
        self.q, self.dtype = q, dtype
        self.num_embeddings, self.embedding_dim = q.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.q.rows(ids.reshape(-1))
        return rows.dequantize().to(self.dtype).reshape(*ids.shape, self.embedding_dim)


def record_source(folder: Path, source: Path) -> None:
    """Point source.json at `source` (the same float model, found elsewhere: a checkpoint restored from the
    build cache)."""
    (Path(folder) / "source.json").write_text(json.dumps({"path": str(Path(source).resolve())}) + "\n")


LAZY_ABOVE = 500_000_000  # quantized decoder weights (a separate head counted too) above which the reference dequantizes on call


def load_quantized(path: str | Path, max_seq_len: int | None = None, dtype: torch.dtype = torch.float32,
                   activations: str | None = None, activation_blocks: dict[str, int] | None = None,
                   lazy: bool | None = None) -> LoadedModel:
    """`gemma_edge.model.load` for a quantized checkpoint: the quantized reference model
    (`activations`, `activation_blocks`, `lazy` as in `QuantizedCheckpoint.build_model`; by default lazy
    above LAZY_ABOVE parameters: the 1B's float reference is 5 GB, its integers 1.3, 0.7 as stored).
    The integers stay as stored (int4 two per byte) and are unpacked as each weight is dequantized."""
    path = Path(path)
    ckpt = QuantizedCheckpoint.load(path, unpack=False)
    seq = max_seq_len or min(4096, ckpt.config.max_position_embeddings)
    tok = (Tokenizer(ckpt.tokenizer_model, str(path / "tokenizer.model"), ckpt.config.bos_token_id)
           if ckpt.tokenizer_model else None)
    if lazy is None:
        lazy = sum(math.prod(q.shape) for k, q in ckpt.quantized.items() if not is_vision(k)) > LAZY_ABOVE
    return LoadedModel(ckpt.config, ckpt.build_model(seq, dtype, activations, activation_blocks, lazy), tok, path)


def _has_vision(path: Path) -> bool:
    mm = Path(path) / "multimodal_config.json"
    try:
        return "vision_config" in json.loads(mm.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def _load_vision(path: Path, dtype: torch.dtype = torch.float32, activations: str | None = None) -> VisionEncoder:
    return QuantizedCheckpoint.load(path, unpack=False, only=is_vision).build_vision(dtype, activations)


# How `gemma_edge.model.load` opens these folders (the "gemma_edge.folders" entry point in pyproject.toml).
QUANTIZED_FOLDER = FolderKind("quantized checkpoint", is_quantized_checkpoint, load_quantized, _has_vision,
                              _load_vision)


# ---- simulated dynamic activation quantization: what a runtime does to a linear's input ------------

def fake_quantize_per_token_int8(x: torch.Tensor) -> torch.Tensor:
    """Asymmetric int8 per token (row), as PyTorch's `quantized_decomposed` per-token ops define it — the
    ops the `.pte` graph carries and XNNPACK's dynamic quantization reproduces. (The zero point is taken
    from whichever end of the range loses less, so a hand-written min-side formula differs on some tokens.)"""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  registers quantized_decomposed

    ops = torch.ops.quantized_decomposed
    scale, zero_point = ops.choose_qparams_per_token_asymmetric(x, torch.int8)
    q = ops.quantize_per_token(x, scale, zero_point, -128, 127, torch.int8)
    return ops.dequantize_per_token(q, scale, zero_point, -128, 127, torch.int8, torch.float32)


def fake_quantize_per_block_int8(x: torch.Tensor, block: int) -> torch.Tensor:
    """Symmetric int8 per `block` consecutive input features (scale amax / 127, rounding half to even): how
    onnxruntime's MatMulNBits quantizes its input at accuracy_level 4 (MLAS CompInt8), `block` being the
    weight's own block. Agrees with onnxruntime's output to float rounding (tests/test_onnx_tiny.py)."""
    groups = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    amax = groups.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return (torch.round(groups * inverse) * (amax / 127.0)).reshape(x.shape)


class DynamicInt8Linear(nn.Linear):
    """A linear whose input is quantized to int8 at run time before the (dequantized) weight is applied:
    per token when `block` is None (XNNPACK), else symmetric per `block` input features (onnxruntime)."""

    block: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = (fake_quantize_per_token_int8(x.float()) if self.block is None
              else fake_quantize_per_block_int8(x.float(), self.block))
        return F.linear(xq.to(x.dtype), self.weight, self.bias)


def _quantize_activations(model: nn.Module, only: set[str] | None = None, blocks: dict[str, int] | None = None) -> None:
    """Every linear (or those whose weight is named in `only`) takes int8 per-token inputs; with `blocks`
    ({weight name: block}) the weights named there take int8 inputs per block and the rest float ones.
    A tied head goes by the embedding's name."""

    def plan(weight: str) -> tuple[bool, int | None]:
        if blocks is not None:
            return weight in blocks, blocks.get(weight)
        return only is None or weight in only, None

    def quantized_input(linear: nn.Linear, block: int | None) -> DynamicInt8Linear:
        new = DynamicInt8Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                device="meta", dtype=linear.weight.dtype)  # takes the linear's own tensors
        new.weight, new.bias, new.block = linear.weight, linear.bias, block
        return new

    def replace(name: str, child: nn.Module) -> nn.Module | None:
        quantize, block = plan(f"{name}.weight")
        return quantized_input(child, block) if type(child) is nn.Linear and quantize else None

    swap_modules(model, replace)
    if isinstance(model, Gemma) and model.lm_head is None:  # a tied head shares the embedding table
        quantize, block = plan(EMBEDDING)
        if quantize:
            head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False, device="meta")
            head.weight = model.embed_tokens.weight
            model.lm_head = quantized_input(head, block)


ACTIVATION_MODES = ("none", "int8_dynamic", "int8_block")


def _simulate_activations(model: nn.Module, mode: str, blocks: dict[str, int] | None,
                          only: set[str] | None = None) -> None:
    """Give `model` the activation numerics `mode` names (`only`: the per-token mode's linears, all if None)."""
    if mode not in ACTIVATION_MODES:
        raise GemmaEdgeError(f"activations {mode!r}: must be one of {', '.join(ACTIVATION_MODES)}")
    if mode == "int8_dynamic":
        _quantize_activations(model, only=only)
    elif mode == "int8_block":
        if blocks is None:
            raise GemmaEdgeError("int8_block activations need the artifact's activation_blocks (its manifest "
                                 "metadata); re-export the folder")
        _quantize_activations(model, blocks=blocks)

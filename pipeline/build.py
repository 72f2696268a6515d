"""The one build path: source -> (HF folder) -> (QuantizedCheckpoint) -> artifact -> parity report.

Every caller that needs a stage's output — the CLI (`convert`, `quantize`, `export`, `parity`,
`quickstart`), the tests and docs/figures — asks here. Each stage goes through `_stage`: the output path
is checked, the cache (`cache.py`) is asked by content (input digests + options), a miss runs the stage
into the cache, and the verified output is copied to `out` with its recorded source path set to the
caller's source. `cache=False` (`--no-cache`) runs the stage straight into `out`.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from gemma_edge.calibration.recipe import QuantRecipe
from gemma_edge.model.atomic import atomic_dir, check_output_path
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.bundled import resolve_model_path
from gemma_edge.model.digest import content_digest
from gemma_edge.runtimes.backends import BACKENDS, backend

from .cache import BuildCache, default_cache, restore
from .process import in_this_process

# The gemma-edge packages each stage's output can depend on (its key covers their code): a stage imports
# nothing downstream of it, and the pipeline's own code decides how each stage is called.
STAGE_CODE = {
    "convert": ("model", "pipeline"),
    "quantize": ("model", "calibration", "pipeline"),
    "export": ("model", "calibration", "export", "pipeline"),
    "check": ("model", "calibration", "export", "runtimes", "pipeline"),  # parity reports, bench figures
}

KINDS = tuple(BACKENDS)
SEQUENCES = "sequences.json"  # beside the data-free statistics in the "calibrate" cache entry
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _cache(cache: BuildCache | bool) -> BuildCache | None:
    return cache if isinstance(cache, BuildCache) else default_cache(bool(cache))


def _stage(name: str, out: str | Path, inputs: Sequence[Path], options: dict,
           make: Callable[[Path, bool], object], cache: BuildCache | bool, overwrite: bool,
           code: tuple[str, ...], relocate: Callable[[Path], None] | None = None) -> Path:
    """Run stage `name` (or take it from the cache) and leave its output at `out`."""
    out = check_output_path(out, inputs, overwrite)
    store = _cache(cache)
    if store is None:
        make(out, overwrite)
        return out
    key_inputs = {"options": options, "inputs": [content_digest(p) for p in inputs]}
    with store.open(name, key_inputs, lambda folder: make(folder, False), code) as (cached, _), \
            atomic_dir(out, overwrite=overwrite, inputs=inputs) as tmp:
        restore(cached, tmp)
        if relocate is not None:
            relocate(tmp)
    return out


# ---- the stages ------------------------------------------------------------------------------------

def convert(source: str | Path, out: str | Path, dtype: str = "float32", cache: BuildCache | bool = True,
            overwrite: bool = False, progress: bool = True) -> Path:
    """A checkpoint (GGUF, HF folder) as an HF folder that transformers loads (`model.convert`)."""
    from gemma_edge.model import convert as write_hf

    source = resolve_model_path(source)
    return _stage("convert", out, [source], {"dtype": dtype},
                  lambda folder, ow: write_hf(source, folder, dtype=DTYPES[dtype], overwrite=ow, progress=progress),
                  cache, overwrite, code=STAGE_CODE["convert"])


@dataclass(frozen=True)
class Calibration:
    """Where the activation statistics of the weighted clip search come from: a `gemma-edge calibrate`
    folder, calibration text files cut into `samples` sequences of `seq_len` tokens, or by default
    (`data_free`) `samples` sequences the float model samples itself (seeded; cached per checkpoint, so
    every recipe of one model reuses them). `data_free=False` with neither: every input feature alike."""

    stats: Path | None = None
    texts: tuple[Path, ...] = ()
    samples: int = 16
    seq_len: int = 256
    data_free: bool = True
    seed: int = 0

    @property
    def inputs(self) -> list[Path]:
        return ([self.stats] if self.stats else []) + list(self.texts)

    @property
    def sampled(self) -> bool:
        return self.data_free and self.stats is None and not self.texts

    @property
    def weighted(self) -> bool:
        return bool(self.inputs) or self.sampled

    def describe(self) -> dict:
        cut = bool(self.texts) or self.sampled
        return {"stats": self.stats is not None, "texts": len(self.texts), "data_free": self.sampled,
                "samples": self.samples if cut else None, "seq_len": self.seq_len if cut else None,
                "seed": self.seed if self.sampled else None}


def quantize(source: str | Path, out: str | Path, recipe: str | QuantRecipe,
             calibration: Calibration = Calibration(), cache: BuildCache | bool = True, overwrite: bool = False,
             progress: bool = True) -> Path:
    """PTQ of a float checkpoint into a QuantizedCheckpoint folder (`calibration.ptq.quantize_model`)."""
    from gemma_edge.calibration.checkpoint import record_source

    source = resolve_model_path(source)
    recipe = recipe if isinstance(recipe, QuantRecipe) else QuantRecipe.load(recipe)

    def make(folder: Path, ow: bool) -> None:
        from gemma_edge.calibration.ptq import quantize_model
        from gemma_edge.model.loader import iter_weights, load_skeleton
        from gemma_edge.model.memory import return_freed_memory

        skeleton = load_skeleton(source)  # the float model is loaded only to compute statistics, then freed
        gptq = recipe.rounding == "gptq"
        # GPTQ's Hessians wait on disk beside the output (4B: 19 GB) until their weight is rounded
        with tempfile.TemporaryDirectory(dir=Path(folder).parent, prefix=".gptq-hessians-") as hessians:
            stats = (_stats(skeleton, calibration, cache, progress, hessians=Path(hessians) if gptq else None)
                     if recipe.clip == "mse" or gptq else None)
            return_freed_memory()  # the freed float model's heap pages (4B: 0.3 GB left after its statistics)
            quantize_model(skeleton, recipe, stats, progress=progress, weights=iter_weights(source)).save(
                folder, overwrite=ow)

    return _stage("quantize", out, [source, *calibration.inputs],
                  {"recipe": recipe.to_dict(), "calibration": calibration.describe()}, make, cache, overwrite,
                  relocate=lambda folder: record_source(folder, source), code=STAGE_CODE["quantize"])


BFLOAT16_ABOVE = 2_000_000_000  # parameters above which calibration runs the model in bfloat16


def _load_for_calibration(skeleton, seq_len: int):
    """The float model calibration runs (`skeleton`: `load_skeleton` of the checkpoint): float32, or bfloat16
    for a model above BFLOAT16_ABOVE parameters (the 4B's float32 decoder is 15.5 GB; this CPU computes bf16
    matmuls natively)."""
    from gemma_edge.model import load

    if skeleton.tokenizer is None:
        raise GemmaEdgeError(f"{skeleton.source}: no tokenizer.model; calibration needs the tokenizer")
    params = sum(t.numel() for t in skeleton.model.parameters())
    dtype = torch.bfloat16 if params > BFLOAT16_ABOVE else torch.float32
    return load(skeleton.source, max_seq_len=seq_len, dtype=dtype, progress=False)


def _stats(skeleton, calibration: Calibration, cache: BuildCache | bool, progress: bool,
           hessians: Path | None = None):
    """The calibration statistics of the weighted clip search (None without any), with GPTQ's Hessians
    attached (kept in the folder `hessians`) when one is given: they need the calibration sequences, which
    the data-free cache entry keeps beside the statistics. The float model is loaded only when needed."""
    from gemma_edge.calibration.data import read_texts, token_sequences
    from gemma_edge.calibration.gptq import collect_hessians
    from gemma_edge.calibration.observers import CalibrationStats, collect_stats
    from gemma_edge.model.errors import GemmaEdgeError

    if calibration.stats is not None or not calibration.weighted:
        if hessians is not None:
            raise GemmaEdgeError("rounding gptq needs calibration sequences: give --data FILE or let quantize sample "
                                 "them (drop --stats and --unweighted)")
        return CalibrationStats.load(calibration.stats) if calibration.stats is not None else None
    loaded = None

    def model():
        nonlocal loaded
        loaded = loaded or _load_for_calibration(skeleton, calibration.seq_len)
        return loaded

    if calibration.texts:
        sequences = token_sequences(read_texts(calibration.texts), model().tokenizer, calibration.seq_len,
                                    calibration.samples)
        stats = collect_stats(model().model, sequences, progress=progress)
    else:
        stats, sequences = _sampled_stats(skeleton.source, model, calibration, cache, progress)
    if hessians is not None:
        stats.hessians = collect_hessians(model().model, sequences, hessians, progress)
    return stats


def _sampled_stats(source: Path, model, calibration: Calibration, cache: BuildCache | bool, progress: bool):
    """(statistics, sequences) of the data-free calibration: sampled once per checkpoint and seed, cached;
    `model()` loads the float model, on a miss only."""
    from gemma_edge.calibration.data import sample_sequences
    from gemma_edge.calibration.observers import CalibrationStats, collect_stats

    def sample(folder: Path | None = None):
        loaded = model()
        sequences = sample_sequences(loaded, calibration.samples, calibration.seq_len, calibration.seed, progress)
        stats = collect_stats(loaded.model, sequences, progress=progress)
        if folder is not None:
            stats.save(folder)
            (folder / SEQUENCES).write_text(json.dumps(sequences) + "\n")
        return stats, sequences

    store = _cache(cache)
    if store is None:
        return sample()
    key = {"options": calibration.describe(), "inputs": [content_digest(source)]}
    with store.open("calibrate", key, sample, STAGE_CODE["quantize"]) as (folder, _):
        return CalibrationStats.load(folder), json.loads((folder / SEQUENCES).read_text())


def export(source: str | Path, out: str | Path, kind: str, max_seq_len: int = 2048, text_only: bool = False,
           cache: BuildCache | bool = True, overwrite: bool = False, int8_activations: bool = False,
           windowed_kv: bool = False, prefill_chunk: int | None = None) -> Path:
    """A device artifact folder: `kind` "pte" (ExecuTorch) or "onnx" from a float or quantized checkpoint.
    `int8_activations`, `windowed_kv`, `prefill_chunk`: options only some backends take
    (`Backend.export_options`; a .pte runs int8 activations and keeps ring caches for sliding layers anyway,
    and only a .pte has a longest call shorter than its context)."""
    from gemma_edge.export.manifest import record_source

    target = backend(kind)
    source = resolve_model_path(source)
    options = {"max_seq_len": max_seq_len, "text_only": text_only}
    for name, value in (("int8_activations", int8_activations), ("windowed_kv", windowed_kv),
                        ("prefill_chunk", prefill_chunk)):
        if value:
            if name not in target.export_options:
                takers = [b.name for b in BACKENDS.values() if name in b.export_options]
                raise GemmaEdgeError(f"--{name.replace('_', '-')} is an option of export {' or '.join(takers)}, "
                                     f"not of export {kind}")
            options[name] = value

    def make(folder: Path, ow: bool) -> None:
        target.export(source, folder, overwrite=ow, **options)

    return _stage(f"export-{kind}", out, [source], options, make,
                  cache, overwrite, relocate=lambda folder: record_source(folder, source), code=STAGE_CODE["export"])


def build(source: str | Path, folder: str | Path, recipe: str | QuantRecipe | None = None,
          kinds: Sequence[str] = KINDS, max_seq_len: int = 2048, cache: BuildCache | bool = True,
          overwrite: bool = False, progress: bool = True, run: Callable[..., Any] = in_this_process) -> dict[str, Path]:
    """source -> HF folder (a GGUF is converted) -> QuantizedCheckpoint (with `recipe`) -> one artifact per
    kind, under `folder`: `<source name>/`, `q-<recipe>/`, `<kind>-<recipe or float32>/`. Returns
    {"float": ..., "quantized": ... (with a recipe), "pte": ..., "onnx": ...}. `run(stage, *args)` runs
    each stage (`process.in_fresh_process`: each in a process of its own)."""
    source = resolve_model_path(source)
    folder = Path(folder)
    paths: dict[str, Path] = {}
    if source.is_file():  # a GGUF: the references and exporters read an HF folder
        source = paths["float"] = run(convert, source, folder / source.stem.lower(), cache=cache,
                                      overwrite=overwrite, progress=progress)
    else:
        paths["float"] = source
    label = "float32"
    if recipe is not None:
        recipe = recipe if isinstance(recipe, QuantRecipe) else QuantRecipe.load(recipe)
        label = recipe.name
        source = paths["quantized"] = run(quantize, source, folder / f"q-{label}", recipe, cache=cache,
                                          overwrite=overwrite, progress=progress)
    for kind in kinds:
        paths[kind] = run(export, source, folder / f"{kind}-{label}", kind, max_seq_len=max_seq_len, cache=cache,
                          overwrite=overwrite)
    return paths


# ---- parity reports ---------------------------------------------------------------------------------

def artifact_digest(folder: Path) -> str:
    """What an artifact computes: every file but the manifest's record of where its source lay."""
    from gemma_edge.export.manifest import MANIFEST, read_manifest

    manifest = read_manifest(folder)
    manifest["source"] = {k: v for k, v in manifest["source"].items() if k not in ("name", "path")}
    files = {p.name: content_digest(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    return json.dumps({"manifest": manifest, "files": files}, sort_keys=True)


def parity(artifact: str | Path, against: str = "quantized", source: str | Path | None = None,
           prompts: list[tuple] | None = None, image_prompts: list[tuple] | None = None,
           cache: BuildCache | bool = True, verify: bool = True):
    """`runtimes.parity.run_parity`, its report cached by the content of the artifact, the reference, the
    prompts and the thresholds (a CI job that re-checks an unchanged model takes seconds). With `verify`
    the artifact's files are checked against its manifest first, cache or not."""
    from gemma_edge.export.manifest import verify_artifact
    from gemma_edge.runtimes.parity import ParityReport, load_thresholds, reference_path, run_parity

    artifact = Path(artifact)
    if verify:
        verify_artifact(artifact)
    store = _cache(cache)
    if store is None:
        return run_parity(artifact, against=against, source=source, prompts=prompts, image_prompts=image_prompts,
                          verify=False)
    reference = reference_path(artifact, against, source)
    key_inputs = {"artifact": artifact_digest(artifact), "reference": content_digest(reference), "against": against,
                  "thresholds": load_thresholds(), "prompts": _prompt_digest(prompts),
                  "image_prompts": _prompt_digest(image_prompts)}

    def make(folder: Path) -> None:
        report = run_parity(artifact, against=against, source=reference, prompts=prompts, image_prompts=image_prompts,
                            verify=False)
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(report.to_dict(), sort_keys=True) + "\n")

    cached, _ = store.get_or_build("parity", key_inputs, make, STAGE_CODE["check"])
    report = ParityReport.from_dict(json.loads((cached / "report.json").read_text()))
    return dataclasses.replace(report, artifact=str(artifact), reference=str(reference))


def _prompt_digest(prompts: list[tuple] | None) -> list | None:
    """Prompts as (name, ids[, pixels digest]) for a key."""
    if prompts is None:
        return None
    import hashlib

    out = []
    for name, ids, *images in prompts:
        pixels = images[0] if images else None
        out.append([name, list(ids), None if pixels is None else
                    hashlib.sha256(pixels.float().contiguous().numpy().tobytes()).hexdigest()])
    return out


# ---- bench figures for reports ----------------------------------------------------------------------

def bench_figures(artifact: str | Path, runs: int = 3, cache: BuildCache | bool = True) -> dict:
    """`runtimes.bench.bench` of an artifact, kept in the cache with when and where it was measured, so a
    report rebuilt on the same host shows the same figures (`gemma-edge bench` always measures anew)."""
    import platform
    import time

    from gemma_edge.runtimes import artifact_files
    from gemma_edge.runtimes.bench import bench, host_description

    store = _cache(cache)
    if store is None:
        return bench(artifact, runs=runs)

    def make(folder: Path) -> None:
        figures = bench(artifact, runs=runs)
        figures["measured"] = time.strftime("%Y-%m-%d %H:%M %Z")
        folder.mkdir()
        (folder / "bench.json").write_text(json.dumps(figures, sort_keys=True) + "\n")

    key_inputs = {"artifact": artifact_digest(Path(artifact)), "runs": runs, "host": host_description(),
                  "node": platform.node()}
    cached, _ = store.get_or_build("bench", key_inputs, make, STAGE_CODE["check"])
    figures = json.loads((cached / "bench.json").read_text())
    figures["artifact"] = str(artifact_files(artifact)[0])  # where it lies now
    return figures

"""PTQ on the real Gemma 3 270M: MSE clipping beats min-max on held-out text."""

import dataclasses

import pytest

from gemma_edge.calibration.checkpoint import QuantizedCheckpoint
from gemma_edge.calibration.data import held_out_text
from gemma_edge.calibration.evaluate import evaluate
from gemma_edge.calibration.recipe import PRESETS
from gemma_edge.pipeline.build import quantize

pytestmark = pytest.mark.real


@pytest.mark.parametrize("preset", ["int4-channel", "int4-block32"])
def test_mse_clipping_beats_minmax(real_hf_dir, real_model, tmp_path, preset):
    """The checkpoints come through the build cache (the MSE int4-block32 one is the suite's shared one)."""
    tokens = real_model.tokenizer.encode(held_out_text(12_000))[:2048]
    ppl = {}
    for clip in ("minmax", "mse"):
        folder = quantize(real_hf_dir, tmp_path / clip, dataclasses.replace(PRESETS[preset], clip=clip), progress=False)
        model = QuantizedCheckpoint.load(folder).build_model(512)
        ppl[clip] = evaluate(model, tokens, seq_len=512, progress=False).perplexity
    float_ppl = evaluate(real_model.model, tokens, seq_len=512, progress=False).perplexity
    assert float_ppl < ppl["mse"] < ppl["minmax"], ppl

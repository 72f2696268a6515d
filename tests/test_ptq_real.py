"""PTQ on the real Gemma 3 270M: MSE clipping beats min-max on held-out text."""

import dataclasses

import pytest

from gemma_edge.calibration.data import held_out_text
from gemma_edge.calibration.evaluate import evaluate
from gemma_edge.calibration.ptq import quantize_model
from gemma_edge.calibration.recipe import PRESETS

pytestmark = pytest.mark.real


@pytest.mark.parametrize("preset", ["int4-channel", "int4-block32"])
def test_mse_clipping_beats_minmax(real_model, preset):
    tokens = real_model.tokenizer.encode(held_out_text(12_000))[:2048]
    ppl = {}
    for clip in ("minmax", "mse"):
        ckpt = quantize_model(real_model, dataclasses.replace(PRESETS[preset], clip=clip), progress=False)
        ppl[clip] = evaluate(ckpt.build_model(512), tokens, seq_len=512, progress=False).perplexity
    float_ppl = evaluate(real_model.model, tokens, seq_len=512, progress=False).perplexity
    assert float_ppl < ppl["mse"] < ppl["minmax"], ppl

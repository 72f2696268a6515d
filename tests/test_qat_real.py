"""QAT on the real Gemma 3 270M: a short run lowers the divergence from the float model on the text it
trained on, and the ONNX export of the result passes the parity harness against the QAT reference.
(The full QAT-versus-PTQ figure, 30 CPU minutes, is docs/quantization.md's QAT section.)"""

import shutil

import pytest

from gemma_edge.calibration.checkpoint import QuantizedCheckpoint
from gemma_edge.calibration.data import pydoc_training_text, token_sequences
from gemma_edge.calibration.evaluate import evaluate
from gemma_edge.calibration.qat import QATConfig, train
from gemma_edge.export.onnx import export_onnx
from gemma_edge.runtimes.parity import run_parity

pytestmark = pytest.mark.real

SEQ_LEN = 128


def test_short_qat_lowers_kl_and_its_onnx_export_passes_parity(real_model, real_quantized, tmp_path):
    init = QuantizedCheckpoint.load(real_quantized("int4-block32"))
    seqs = token_sequences([pydoc_training_text()[:20_000]], real_model.tokenizer, SEQ_LEN, 2)
    cfg = QATConfig(steps=10, seq_len=SEQ_LEN, top_k=64, warmup=2)
    qat = train(real_model, init, seqs, cfg, tmp_path / "state", progress=False)
    shutil.rmtree(tmp_path / "state")  # 3 GB of resumable state (weights and Adam moments): CI's disk is small
    tokens = [t for s in seqs for t in s]  # windows of SEQ_LEN: exactly the training sequences
    before = evaluate(init.build_model(SEQ_LEN), tokens, SEQ_LEN, reference=real_model.model, progress=False)
    after = evaluate(qat.build_model(SEQ_LEN), tokens, SEQ_LEN, reference=real_model.model, progress=False)
    assert after.kl_to_float < 0.9 * before.kl_to_float, (before, after)
    report = run_parity(export_onnx(qat.save(tmp_path / "qat"), tmp_path / "onnx", max_seq_len=1024))
    assert report.passed, report.failures
    assert report.gate == "fidelity.weight_only"

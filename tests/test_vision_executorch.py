"""The multimodal `.pte` (tiny random Gemma 3 with a vision tower) against the PyTorch reference: each method,
every call of an image+text prompt fed as ExecuTorch's MultimodalRunner feeds it, and the stock C++
MultimodalRunner's greedy text."""

from __future__ import annotations

import json

import pytest
import torch

from gemma_edge.model import GemmaEdgeError, ReferenceRunner, generate
from gemma_edge.model.image_processing import ImageSettings, preprocess, prompt_segments
from gemma_edge.model.loader import load_vision
from gemma_edge.runtimes.executorch_runner import ExecuTorchMultimodalRunner, stock_multimodal_generate
from gemma_edge.pipeline.build import export
from gemma_edge.runtimes.parity import image_prompt_for, run_parity
from tiny_multimodal import TOKENS_PER_IMAGE, exported_tiny, photo, two_image_prompt

MAX_SEQ_LEN = 256


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_tiny(tmp_path_factory, "mm-pte",
                         lambda src, out, max_seq_len: export(src, out, "pte", max_seq_len=max_seq_len), MAX_SEQ_LEN)


def _prompt(folder):
    return two_image_prompt(folder, MAX_SEQ_LEN)


def test_manifest_and_methods(exported):
    folder, pte, ids = exported
    meta = json.loads((pte / "manifest.json").read_text())["metadata"]
    assert meta["vision"] == {"image_size": 32, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                              "tokens_per_image": TOKENS_PER_IMAGE, "image_token_id": ids["<image_soft_token>"],
                              "boi_token_id": ids["<start_of_image>"], "eoi_token_id": ids["<end_of_image>"]}
    runner = ExecuTorchMultimodalRunner(pte)
    pixels, _ = preprocess([photo(32, 32, 1)], ImageSettings(size=32))
    got = runner.encode_image(pixels)
    with torch.no_grad():
        want = load_vision(folder)(pixels)
    torch.testing.assert_close(got[..., :-1], want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[..., -1], torch.ones(1, TOKENS_PER_IMAGE))


def test_the_vision_method_attends_through_the_fused_kernel(exported):
    """Written out, SigLIP's attention put its scores and their softmax (16 × 4,096² floats each at 896 px)
    into the vision method's planned memory: 3.1 GB a 4B multimodal .pte allocated on loading (issue 21)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    _, pte, _ = exported
    program = deserialize_pte_binary((pte / "model.pte").read_bytes())
    plan = next(p for p in getattr(program, "program", program).execution_plan if p.name == "vision_encoder")
    operators = {op.name for op in plan.operators}
    assert "llama::custom_sdpa" in operators
    assert not any("softmax" in name for name in operators)


def test_every_call_of_an_image_prompt_equals_the_reference(exported):
    folder, pte, ids = exported
    loaded, encoder, pixels, tokens = _prompt(folder)
    with torch.no_grad():
        ref = loaded.model(torch.tensor([tokens]), torch.arange(len(tokens)),
                           image_features=encoder(pixels))[0]
    segments = prompt_segments(tokens, ids["<image_soft_token>"], TOKENS_PER_IMAGE)
    assert [s for s in segments if isinstance(s, int)] == [0, 1, 2, 3, 4]  # image, image, its 3 crops
    ends = []
    for s in segments:
        ends.append((ends[-1] if ends else 0) + (TOKENS_PER_IMAGE if isinstance(s, int) else len(s)))
    runner = ExecuTorchMultimodalRunner(pte)
    runner.images = pixels
    got = torch.stack(runner.segment_logits(tokens))
    torch.testing.assert_close(got, ref[[e - 1 for e in ends]], atol=1e-4, rtol=1e-4)
    # A decoder with causal attention over the images (what a stock export does) would not pass.
    loaded.model.reset_caches()
    with torch.no_grad():
        x = loaded.model.embed(torch.tensor([tokens]), encoder(pixels))
        causal = loaded.model.logits(loaded.model.hidden(x, torch.arange(len(tokens))))[0]
    assert (got[-1] - causal[ends[-1] - 1]).abs().max() > 1e-2


def test_stock_multimodal_runner_generates_the_reference_greedy_text(exported):
    folder, pte, ids = exported
    loaded, encoder, pixels, tokens = _prompt(folder)
    with torch.no_grad():
        features = encoder(pixels)
    stops = loaded.tokenizer.stop_ids
    new = generate(ReferenceRunner(loaded.model, features), tokens, 12, stop_ids=stops)
    want = loaded.tokenizer.decode([t for t in new if t not in stops])
    segments = prompt_segments(tokens, ids["<image_soft_token>"], TOKENS_PER_IMAGE)
    assert stock_multimodal_generate(pte, segments, pixels, max_new_tokens=12) == want


def test_text_only_export_leaves_the_vision_tower_out(exported, tmp_path, monkeypatch):
    """--text-only lowers the one-method text graph (the path the text suites test) and records no vision."""
    import gemma_edge.export.executorch as et

    folder, _, _ = exported
    lowered = {}

    def fake_lower(model, stop_ids, progress=True, vision=None, prefill_chunk=None):
        lowered.update(methods=sorted(et.pte_methods(model, vision, prefill_chunk)), vision=vision)
        return type("Program", (), {"write_to_file": staticmethod(lambda f: f.write(b"pte")),
                                    "write_tensor_data_to_file": staticmethod(lambda folder: None)})()

    monkeypatch.setattr(et, "lower_to_pte", fake_lower)
    monkeypatch.setattr(et, "PREFILL_CHUNK", MAX_SEQ_LEN // 4)  # the tiny model's context is MAX_SEQ_LEN
    out = et.export_pte(folder, tmp_path / "text", max_seq_len=MAX_SEQ_LEN, text_only=True)  # patched: no cache
    assert lowered == {"methods": ["forward"], "vision": None}
    metadata = json.loads((out / "manifest.json").read_text())["metadata"]
    assert "vision" not in metadata
    # a text .pte takes prompts in calls of PREFILL_CHUNK; the multimodal one refuses a shorter call
    assert (metadata["get_max_seq_len"], metadata["get_max_context_len"]) == (MAX_SEQ_LEN // 4, MAX_SEQ_LEN)
    with pytest.raises(GemmaEdgeError, match="--prefill-chunk is for text .pte files"):
        et.export_pte(folder, tmp_path / "chunked", max_seq_len=MAX_SEQ_LEN, prefill_chunk=MAX_SEQ_LEN // 2)


def test_parity_harness_passes_the_multimodal_pte(exported):
    """`gemma-edge parity` on the multimodal .pte: the built-in text prompts (token_embedding + text_decoder)
    and a Pan & Scan image prompt, each against the reference and through the stock MultimodalRunner."""
    folder, pte, _ = exported
    prompt = image_prompt_for(pte, "compare <start_of_image> and <start_of_image>", [photo(30, 34, 5), photo(20, 60, 6)],
                              pan_and_scan=True)
    report = run_parity(pte, image_prompts=[prompt])
    assert report.passed, report.failures
    assert [p.runtime_loop_agrees for p in report.prompts] == [True] * 5
    assert report.prompts[-1].metrics["max_abs_logit"] < 1e-4


def test_skipping_idle_passes_writes_the_same_multimodal_program(tmp_path_factory, monkeypatch):
    """The three methods with a vision tower (convolutions, XNNPACK's full pass list): byte for byte the
    program the unskipped passes give (no build cache: each side lowers)."""
    import gemma_edge.export.idle_passes as ip

    def lower(src, out, max_seq_len):
        return export(src, out, "pte", max_seq_len=max_seq_len, cache=False)

    _, fast, _ = exported_tiny(tmp_path_factory, "fast", lower, MAX_SEQ_LEN)
    monkeypatch.setattr(ip, "HAS_WORK", {})
    _, full, _ = exported_tiny(tmp_path_factory, "full", lower, MAX_SEQ_LEN)
    assert (fast / "model.pte").read_bytes() == (full / "model.pte").read_bytes()

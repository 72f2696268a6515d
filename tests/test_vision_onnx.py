"""The multimodal ONNX export (tiny random Gemma 3 with a vision tower) against the PyTorch reference: the
vision and embedding models, the decoder fed embeddings through ONNX Runtime, onnxruntime-genai's own
`gemma3` pipeline, and the parity harness with an image prompt."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from gemma_edge.export.onnx import export_onnx
from gemma_edge.model import ReferenceRunner, generate
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.image_processing import ImageSettings, preprocess
from gemma_edge.model.loader import load_vision
from gemma_edge.runtimes import open_runner
from gemma_edge.runtimes.genai_runner import GenAIRunner
from gemma_edge.runtimes.onnx_runner import OnnxMultimodalRunner
from gemma_edge.runtimes.parity import image_prompt_for, run_parity
from tiny_multimodal import TOKENS_PER_IMAGE, exported_tiny, photo, two_image_prompt

MAX_SEQ_LEN = 256


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_tiny(tmp_path_factory, "mm-onnx", export_onnx, MAX_SEQ_LEN)


def _prompt(folder):
    return two_image_prompt(folder, MAX_SEQ_LEN)


def test_layout_is_genai_gemma3(exported):
    folder, out, ids = exported
    config = json.loads((out / "genai_config.json").read_text())["model"]
    hidden = json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"]
    assert config["type"] == "gemma3" and config["image_token_id"] == ids["<image_soft_token>"]
    assert config["decoder"]["hidden_size"] == hidden + 1  # genai sizes both feature buffers by it
    assert config["vision"]["filename"] == "vision.onnx" and config["embedding"]["filename"] == "embedding.onnx"
    decoder = onnx.load(out / "model.onnx", load_external_data=False).graph
    assert [i.name for i in decoder.input][:2] == ["inputs_embeds", "attention_mask"]
    ops = {n.op_type for n in decoder.node}
    assert "Attention" in ops and "GroupQueryAttention" not in ops  # GQA cannot unmask later image tokens
    meta = json.loads((out / "manifest.json").read_text())["metadata"]["vision"]
    assert meta["tokens_per_image"] == TOKENS_PER_IMAGE and meta["image_token_id"] == ids["<image_soft_token>"]


def test_vision_model_equals_the_reference_encoder(exported):
    folder, out, _ = exported
    runner = OnnxMultimodalRunner(out)
    pixels, _ = preprocess([photo(32, 32, 1), photo(40, 24, 2)], ImageSettings(size=32))
    got = torch.from_numpy(runner.encode_images(pixels))
    with torch.no_grad():
        want = load_vision(folder)(pixels)
    torch.testing.assert_close(got[:, :-1], want.reshape(-1, want.shape[-1]), atol=1e-5, rtol=1e-5)
    assert torch.equal(got[:, -1], torch.ones(2 * TOKENS_PER_IMAGE))


def test_every_position_of_an_image_prompt_equals_the_reference(exported):
    folder, out, _ = exported
    loaded, encoder, pixels, tokens = _prompt(folder)
    with torch.no_grad():
        features = encoder(pixels)
        ref = loaded.model(torch.tensor([tokens]), torch.arange(len(tokens)), image_features=features)[0]
    runner = OnnxMultimodalRunner(out)
    runner.images = pixels
    got = runner.prompt_logits(tokens)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    # the decode steps after it, through the caches
    step = ReferenceRunner(loaded.model, features)
    step.reset()
    step.prefill(tokens)
    for token in (5, 9, 17):
        torch.testing.assert_close(runner.decode(token), step.decode(token), atol=1e-4, rtol=1e-4)
    # A decoder with causal attention over the images (what a GroupQueryAttention decoder does) would not pass.
    loaded.model.reset_caches()
    with torch.no_grad():
        x = loaded.model.embed(torch.tensor([tokens]), features)
        causal = loaded.model.logits(loaded.model.hidden(x, torch.arange(len(tokens))))[0]
    assert (got - causal).abs().max() > 1e-2


def test_genai_gemma3_pipeline_generates_the_reference_greedy_tokens(exported):
    """onnxruntime-genai's own vision -> embedding -> decoder loop, fed the preprocessed pixels and the
    expanded prompt as its multimodal processor hands them over."""
    folder, out, ids = exported
    loaded, encoder, pixels, tokens = _prompt(folder)
    with torch.no_grad():
        features = encoder(pixels)
    want = generate(ReferenceRunner(loaded.model, features), tokens, 12, stop_ids=loaded.tokenizer.stop_ids)
    genai = GenAIRunner(out)
    assert genai.generate(tokens, 12, pixels, image_tokens=len(pixels) * TOKENS_PER_IMAGE) == want
    text = loaded.tokenizer.encode("a text-only prompt to the same pipeline")
    assert genai.generate(text, 12) == generate(ReferenceRunner(loaded.model), text, 12,
                                                stop_ids=loaded.tokenizer.stop_ids)


def test_parity_harness_checks_an_image_prompt(exported):
    folder, out, _ = exported
    report = run_parity(out, image_prompts=[image_prompt_for(out, "compare <start_of_image> and <start_of_image>",
                                                             [photo(30, 34, 5), photo(20, 60, 6)], pan_and_scan=True)])
    assert report.passed, report.failures
    image = report.prompts[-1]
    assert image.prefill > image.tokens - 8  # the images and most of the text go in the prefill
    assert image.metrics["max_abs_logit"] < 1e-4 and image.runtime_loop_agrees


def test_parity_harness_fails_a_causal_image_decoder(exported):
    """A runner that feeds the images but attends causally (their flag channel zeroed) is caught."""
    folder, out, _ = exported

    class CausalImages(OnnxMultimodalRunner):
        def encode_images(self, pixels):
            features = super().encode_images(pixels)
            features[:, -1] = 0.0
            return features

    prompt = image_prompt_for(out, "what is in <start_of_image>?", [photo(30, 34, 5)])
    report = run_parity(out, prompts=[("text", prompt[1][:3])], image_prompts=[prompt], runner=CausalImages(out))
    assert not report.passed
    assert any(f.startswith(prompt[0]) and "max |dlogit|" in f for f in report.failures)


def test_bench_measures_the_multimodal_folder_on_text(exported, capsys):
    """The 4B's folder is multimodal: `gemma-edge bench` runs its text path (embedding + decoder)."""
    from gemma_edge.cli.main import main

    _, out, _ = exported
    assert main(["bench", str(out), "--prompt-len", "8", "--decode-tokens", "2", "--runs", "1", "--json"]) == 0
    printed = capsys.readouterr().out
    figures = json.loads(printed[printed.index("{"):])  # one folder: one JSON object, after the table
    assert figures["decode_tok_s"] > 0 and figures["prefill_tok_s"] > 0


def test_image_prompts_need_a_multimodal_artifact(exported, tmp_path):
    folder, _, _ = exported
    text_only = export_onnx(folder, tmp_path / "text", max_seq_len=64, text_only=True)
    assert "vision" not in json.loads((text_only / "manifest.json").read_text())["metadata"]
    assert not (text_only / "vision.onnx").exists()
    assert type(open_runner(text_only)).__name__ == "OnnxRunner"
    with pytest.raises(GemmaEdgeError, match="text-only artifact takes no images"):
        image_prompt_for(text_only, "<start_of_image>", [photo(32, 32, 1)])


def test_parity_cli_with_images(exported, tmp_path, capsys):
    from gemma_edge.cli.main import main

    folder, out, _ = exported
    photo(60, 200, 3).save(tmp_path / "wide.png")
    photo(50, 50, 4).save(tmp_path / "square.jpg")
    code = main(["parity", str(out), "--image", str(tmp_path / "wide.png"), str(tmp_path / "square.jpg"),
                 "--pan-and-scan", "--report", str(tmp_path / "report")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((tmp_path / "report" / "parity.json").read_text())
    image = report["prompts"][-1]
    assert image["name"] == "image prompt (wide.png, square.jpg)" and report["passed"]
    assert image["tokens"] > 2 * TOKENS_PER_IMAGE and image["runtime_loop_agrees"]

"""Loading without extra copies (issue 21): safetensors read with plain reads, models built on the meta device
and given the checkpoint's tensors as they are."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from gemma_edge.model import load
from gemma_edge.model.errors import GemmaEdgeError
from gemma_edge.model.gemma import Gemma
from gemma_edge.model.hf_checkpoint import (_SAFETENSORS_DTYPES, load_weights, read_safetensors, read_state_dict,
                                            save_safetensors_streamed)


def test_read_safetensors_equals_the_safetensors_library(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"a.bf16": torch.randn(3, 5, generator=g).bfloat16(), "b.f32": torch.randn(7, generator=g),
               "c.f16": torch.randn(2, 2, 2, generator=g).half(), "d.i8": torch.randint(-128, 127, (9,), dtype=torch.int8),
               "e.scalar": torch.tensor(2.5), "f.empty": torch.zeros(0, 4), "g.i64": torch.arange(4),
               "h.fp8": torch.randn(6, generator=g).to(torch.float8_e4m3fn)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    ours = dict(read_safetensors(path, lambda name: name != "g.i64"))
    theirs = load_file(str(path))
    assert sorted(ours) == sorted(set(tensors) - {"g.i64"})
    for name, t in ours.items():
        assert t.dtype == theirs[name].dtype and t.shape == theirs[name].shape
        assert torch.equal(t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t,
                           theirs[name].view(torch.uint8) if t.dtype == torch.float8_e4m3fn else theirs[name])


def test_streamed_safetensors_are_the_bytes_save_file_writes(tmp_path):
    """Every dtype safetensors stores, names that sort against their dtypes, an empty and a 0-d tensor,
    metadata with quotes: byte for byte what the safetensors library writes, tensors made one at a time."""
    g = torch.Generator().manual_seed(0)
    tensors = {f"{i:02d}.{dtype}".replace("torch.", ""): (torch.randn(3, 5, generator=g) * 4).to(dtype)
               for i, dtype in enumerate(_SAFETENSORS_DTYPES.values())}
    tensors |= {"a.empty": torch.zeros(0, 4), "z.scalar": torch.tensor(7, dtype=torch.int32),
                "m.bf16": torch.randn(2, 9, generator=g).bfloat16()}
    metadata = {"gemma_edge": '{"format": "x", "quantized": {"a": "int4"}}'}
    save_file(tensors, str(tmp_path / "library.safetensors"), metadata=metadata)
    made = []
    save_safetensors_streamed({n: (lambda device, t=t, n=n: made.append((n, device)) or t.to(device))
                               for n, t in tensors.items()}, tmp_path / "streamed.safetensors", metadata)
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "library.safetensors").read_bytes()
    assert sorted(n for n, d in made if d == "cpu") == sorted(tensors)  # each made once for its data


@pytest.mark.parametrize("damage", ["header_past_end", "data_past_end"])
def test_a_damaged_safetensors_file_is_named(tiny_dir, damage):
    f = tiny_dir / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes((10**9).to_bytes(8, "little") + raw[8:] if damage == "header_past_end" else raw[:-100])
    with pytest.raises(GemmaEdgeError, match=r"model.safetensors: truncated or corrupt safetensors file"):
        read_state_dict(tiny_dir)


def test_a_loaded_model_holds_the_checkpoint_tensors_and_computes_as_one_copied_into(tiny_dir):
    state = read_state_dict(tiny_dir)
    loaded = load(tiny_dir, max_seq_len=32, progress=False)
    config = loaded.config
    copied = Gemma(config, max_seq_len=32)
    copied.load_state_dict({k: v for k, v in state.items() if k != "lm_head.weight"})
    tokens = torch.tensor([[2, 5, 9, 11, 3, 7]])
    pos = torch.arange(tokens.shape[1])
    with torch.no_grad():
        assert torch.equal(loaded.model(tokens, pos), copied.eval()(tokens, pos))
    # the tensors themselves, not copies, and no buffer left uninitialised
    fresh = read_state_dict(tiny_dir)
    model = load_weights(lambda: Gemma(config, max_seq_len=32), fresh, tiny_dir)
    assert model.embed_tokens.weight.data_ptr() == fresh["embed_tokens.weight"].data_ptr()
    assert torch.equal(model.inv_freq_global, copied.inv_freq_global)
    assert all(float(layer.self_attn.cache.k.abs().sum()) == 0 for layer in model.layers)

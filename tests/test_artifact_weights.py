"""The .pte and the .onnx exported from one QuantizedCheckpoint hold the same integers and scales.

Both files are read back: the ONNX initializers with onnx, the .pte's constant segment and named data
(XNNPACK's weights, keyed by the sha256 of their bytes) with ExecuTorch's own deserializer."""

import hashlib

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from gemma_edge.calibration.checkpoint import QuantizedCheckpoint
from gemma_edge.calibration.formats import unpack_int4
from gemma_edge.calibration.recipe import LM_HEAD
from gemma_edge.export.xnnpack_quant import HEAD_SLICES, row_slices

# One xdist worker lowers the real .pte files (minutes each) and runs every test that reads them.
pytestmark = [pytest.mark.real, pytest.mark.xdist_group("real-pte")]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pte_blobs(pte_path) -> tuple[set[str], set[str]]:
    """sha256 of every constant buffer and the keys of every named-data entry in a .pte."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(pte_path.read_bytes())
    constants = {_sha(bytes(b.storage)) for b in pte.program.constant_buffer}
    return constants, set(pte.named_data.pte_data)


def test_pte_and_onnx_from_one_checkpoint_hold_identical_integers_and_scales(real_export):
    ckpt_dir, pte_dir = real_export("pte", "int4-block32")
    _, onnx_dir = real_export("onnx", "int4-block32")
    model = onnx.load(str(onnx_dir / "model.onnx"))  # external data loaded
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    constants, named = _pte_blobs(pte_dir / "model.pte")
    ckpt = QuantizedCheckpoint.load(ckpt_dir)
    checked = 0
    for name, q in sorted(ckpt.quantized.items()):
        if q.fmt.kind == "int4":
            packed = inits[name + ".nbits"]  # MatMulNBits' [N, blocks, 16] bytes
            scales = inits[name + ".nbits_scale"].reshape(q.shape[0], -1)
            # ONNX: the checkpoint's integers and scales, unchanged
            ints = unpack_int4(torch.from_numpy(packed.reshape(q.shape[0], -1)), signed=True)
            assert np.array_equal(ints.numpy(), q.qdata.numpy()), name
            assert np.array_equal(scales, q.scale.float().numpy()), name
            # .pte: XNNPACK's weight is the same bytes, its scales the same values as bf16 (the LM head's in
            # the row slices it is lowered in, one delegate each)
            bf16 = (scales.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
            assert np.array_equal(bf16.astype(np.uint32) << 16, scales.view(np.uint32)), f"{name}: not bf16-exact"
            packed = packed.reshape(q.shape[0], -1)
            rows = row_slices(q.shape[0], HEAD_SLICES) if name == LM_HEAD else [slice(None)]
            assert (len(rows) > 1) == (name == LM_HEAD)
            for r in rows:
                assert _sha(packed[r].tobytes()) in named, (name, r)
                assert "scale_" + _sha(bf16[r].tobytes()) in named, (name, r)
        else:  # the int8 embedding: the .pte's embedding_byte table and scales are constant buffers
            assert q.fmt.kind == "int8", name
            table, scale = inits[name + ".qdata"], inits[name + ".scale"]
            assert np.array_equal(table, q.qdata.numpy()) and np.array_equal(scale, q.scale.float().numpy())
            assert _sha(table.tobytes()) in constants and _sha(scale.astype(np.float32).tobytes()) in constants
        checked += 1
    assert checked == len(ckpt.quantized) >= 7 * ckpt.config.num_layers + 2

"""The ONNX float16 rewrite (semtile.models.fp16), on the CPU with onnx and onnxruntime.

TensorRT builds its fp16 engines from this rewrite; here onnxruntime runs the
rewritten graphs instead, so the conversion is checked on every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tifffile
import torch
from onnx import TensorProto

from semtile.models.export import export_model
from semtile.models.fp16 import FP16_CONVERTER_VERSION, convert_onnx_to_fp16
from semtile.models.io import load_bundle

TILE = 64  # a multiple of 2**d = 16 of the built-in networks
# Measured on this repository's built-in model (onnxruntime 1.32 CPU, AMD EPYC without AVX-512):
# the tiles below (40) give segmenter probabilities max |fp16 - f32| = 3.1e-3, classifier logits max
# 7.0e-3 (logits span about -41..15); over about 1,900 tiles of 6 other synthetic sets the worst were
# 3.4e-3 and 7.7e-3. float16 keeps 11 significant bits (relative rounding 2**-11 = 4.9e-4 per value)
# and weights and intermediates are rounded through about 20 layers, so errors of a few 1e-3 are what
# fp16 costs, not a conversion bug (a wrong Cast or a weight left behind gives errors of 0.1 and more).
# The bounds keep a 3x margin over the worst measured, for other CPUs and onnxruntime builds that may
# run some float16 kernels natively rather than through float32.
PROBS_ATOL = 1e-2
LOGITS_ATOL = 2.5e-2


@pytest.fixture(scope="module")
def builtin_export(tmp_path_factory) -> Path:
    return export_model(load_bundle(), tmp_path_factory.mktemp("builtin-export"), tile=TILE)


@pytest.fixture(scope="module")
def scan_tiles(tiny_dataset) -> np.ndarray:
    """64x64 tiles cut from the synthetic SEM scans of the shared tiny dataset, in [0, 1]."""
    tiles = []
    for path in sorted((tiny_dataset / "images").glob("*.tif")):
        image = tifffile.imread(path)
        scale = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
        image = image.astype(np.float32) / scale
        for r in range(0, image.shape[0] - TILE + 1, TILE):
            for c in range(0, image.shape[1] - TILE + 1, TILE):
                tiles.append(image[r: r + TILE, c: c + TILE])
    noise = np.random.default_rng(0).random((8, TILE, TILE), dtype=np.float32)
    return np.concatenate([np.stack(tiles), noise])[:, None]


def _session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _check_structure(converted) -> None:
    onnx.checker.check_model(converted, full_check=True)
    for value in (*converted.graph.input, *converted.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
    floats = [i for i in converted.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert floats and all(i.data_type == TensorProto.FLOAT16 for i in floats if not i.name.endswith("__fp32"))


def test_converter_version_is_a_cache_key_component():
    assert FP16_CONVERTER_VERSION.startswith("semtile-fp16/")


@pytest.mark.slow
@pytest.mark.parametrize("network,atol", [("segmenter", PROBS_ATOL), ("classifier", LOGITS_ATOL)])
def test_builtin_model_converts_and_agrees_with_f32(builtin_export, scan_tiles, network, atol):
    original = onnx.load(str(builtin_export / f"{network}.onnx"))
    before = original.SerializeToString()
    converted = convert_onnx_to_fp16(original)
    assert original.SerializeToString() == before  # the input model is left alone
    _check_structure(converted)
    assert converted.ByteSize() < 0.6 * original.ByteSize()  # the weights really are float16 now

    feed = {"tiles": scan_tiles}
    want = _session(original).run(None, feed)[0]
    got = _session(converted).run(None, feed)[0]
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    if network == "segmenter":
        assert got.min() >= 0.0 and got.max() <= 1.0
        assert np.mean((got > 0.5) == (want > 0.5)) >= 0.999


def test_conversion_keeps_resize_scales_float32(tmp_path):
    """Resize's scales input is float32 by definition; the conversion must leave it so."""

    class Upsample(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return torch.sigmoid(torch.nn.functional.interpolate(self.conv(x), scale_factor=2.0, mode="bilinear"))

    torch.manual_seed(0)
    path = tmp_path / "up.onnx"
    torch.onnx.export(Upsample().eval(), (torch.rand(1, 1, 8, 8),), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    original = onnx.load(str(path))
    converted = convert_onnx_to_fp16(original)
    assert any(node.op_type == "Resize" for node in converted.graph.node)
    _check_structure(converted)
    feed = {"x": np.random.default_rng(2).random((2, 1, 8, 8), dtype=np.float32)}
    want, got = _session(original).run(None, feed)[0], _session(converted).run(None, feed)[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=0)

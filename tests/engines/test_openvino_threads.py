"""OpenVINO engines that share a host must not be pinned: every process would pin its threads from core 0."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from semtile.engines.openvino import openvino_cpu_config  # noqa: E402


def _compiled(config: dict):
    x = ov.opset13.parameter([1, 4], np.float32, name="x")
    model = ov.Model([ov.opset13.relu(x)], [x], "relu")
    return ov.Core().compile_model(model, "CPU", config)


def test_an_engine_given_a_thread_count_is_not_pinned():
    compiled = _compiled(openvino_cpu_config("f32", 1))
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    out = compiled(np.array([[-1, 2, -3, 4]], np.float32))[0]
    np.testing.assert_array_equal(out, [[0, 2, 0, 4]])


def test_an_engine_on_the_whole_host_keeps_openvinos_placement():
    config = openvino_cpu_config("f32", None)
    assert "ENABLE_CPU_PINNING" not in config and "INFERENCE_NUM_THREADS" not in config

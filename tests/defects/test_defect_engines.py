"""Defect models on the fast CPU engines: ONNX export (cached), ONNX Runtime and OpenVINO against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from semtile.defects.conformance import engine_conformance
from semtile.defects.data import load_defect_data
from semtile.defects.engines import create_defect_engine
from semtile.defects.export import exported_defect_model, read_export_manifest
from semtile.errors import ModelError, SemtileError
from semtile.models.io import load_model
from semtile.models.kinds import DEFECT_KINDS


def load_defect_model(path):
    return load_model(path, expect=DEFECT_KINDS)


@pytest.fixture(scope="module")
def test_patches(lattice_data):
    data = load_defect_data(lattice_data, split=(0.6, 0.2, 0.2), seed=0)
    idx = data.split["test"]
    return data.stack(idx), np.array([int(data.labels[i]) for i in idx])


@pytest.mark.parametrize("fixture", ["lattice_autoencoder", "patch_classifier"])
def test_engines_agree_with_pytorch_on_patch_auc(request, fixture, test_patches):
    model = load_defect_model(request.getfixturevalue(fixture))
    patches, labels = test_patches
    report = engine_conformance(model, patches, labels, engines=(("onnxruntime", "f32"), ("openvino", "auto")))
    for key in ("onnxruntime f32", "openvino auto"):
        entry = report[key]
        assert "error" not in entry, entry
        tolerance = 1e-4 if entry["precision"] == "f32" else 0.05  # bf16 where the CPU has it
        assert entry["max_rel_difference"] <= tolerance, (key, entry)
        assert abs(entry["auroc_difference"]) <= 0.005, (key, entry)


def test_export_is_cached_checked_and_verified(lattice_autoencoder):
    model = load_defect_model(lattice_autoencoder)
    folder = exported_defect_model(model, tile=48)
    assert exported_defect_model(model, tile=48) == folder  # made once
    manifest = read_export_manifest(folder)
    assert manifest["weights_sha256"] == model.sha256 and manifest["tile"] == 48
    assert manifest["outputs"] == {"anomaly_map": ["batch", 1, 48, 48]}
    (folder / "model.onnx").write_bytes(b"changed")
    with pytest.raises(ModelError, match="sha256"):
        read_export_manifest(folder)
    assert read_export_manifest(exported_defect_model(model, tile=48))  # a broken entry is replaced


def test_engines_refuse_what_they_cannot_run(lattice_autoencoder):
    model = load_defect_model(lattice_autoencoder)
    engine = create_defect_engine(model, "onnxruntime", tile=48)
    with pytest.raises(ValueError, match="48-pixel tiles"):
        engine.run(np.zeros((1, 64, 64), np.float32))
    with pytest.raises(SemtileError, match="unknown defect engine"):
        create_defect_engine(model, "tensorrt")
    with pytest.raises(SemtileError, match="f32"):
        create_defect_engine(model, "onnxruntime", precision="int8")

"""Defect models on the fast CPU engines of the one registry: ONNX export (cached), ONNX Runtime and OpenVINO
against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from semtile.defects.conformance import engine_conformance
from semtile.defects.data import load_defect_data
from semtile.engines import DefectEngine, EngineSettings, create_engine, pick_engine, resolve_engine
from semtile.errors import ModelError, SemtileError
from semtile.models.export import export_model, read_export_manifest
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
    folder = export_model(model, tile=48)
    assert export_model(model, tile=48) == folder  # made once
    assert folder.parent.name == "exports" and folder.name.startswith("autoencoder-")
    manifest = read_export_manifest(folder)
    assert manifest["weights_sha256"] == model.sha256 and manifest["tile"] == 48
    assert manifest["outputs"] == {"anomaly_map": ["batch", 1, 48, 48]}
    (folder / "model.onnx").write_bytes(b"changed")
    with pytest.raises(ModelError, match="sha256"):
        read_export_manifest(folder)
    assert read_export_manifest(export_model(model, tile=48))  # a broken entry is replaced


def test_engines_refuse_what_they_cannot_run(lattice_autoencoder):
    model = load_defect_model(lattice_autoencoder)
    engine, why = create_engine("onnxruntime", model, EngineSettings(tile=48))
    assert isinstance(engine, DefectEngine) and why.startswith("asked for (onnxruntime")
    with pytest.raises(ValueError, match="48-pixel tiles"):
        engine.run(np.zeros((1, 64, 64), np.float32))
    with pytest.raises(SemtileError, match="engine tensorrt does not run autoencoder models: choose auto or one of "
                                           "openvino, onnxruntime, torch-cpu"):
        create_engine("tensorrt", model)
    with pytest.raises(SemtileError, match="engine onnxruntime does not run precision int8 for autoencoder models: "
                                           "it runs f32"):
        create_engine("onnxruntime", model, EngineSettings(precision="int8"))
    with pytest.raises(SemtileError, match="engine torch-cpu does not run precision bf16 for autoencoder models"):
        create_engine("torch-cpu", model, EngineSettings(precision="bf16"))
    with pytest.raises(SemtileError, match="tile 50 must be a positive multiple of 8"):
        create_engine("onnxruntime", model, EngineSettings(tile=50))


def test_the_registry_builds_every_defect_engine_as_before(lattice_autoencoder):
    """Through the registry: the card's tile by default, PyTorch at any tile, the same describe() and outputs."""
    model = load_defect_model(lattice_autoencoder)
    torch_engine, _ = create_engine("torch-cpu", model, EngineSettings(tile=None, precision="f32"))
    assert torch_engine.tile is None and torch_engine.describe() == {
        "name": "torch-cpu", "precision": "f32", "model_sha256": model.sha256}
    tiles = np.random.default_rng(0).random((3, 48, 48), dtype=np.float32)
    reference = torch_engine.run(tiles)
    assert reference.shape == (3, 48, 48) and torch_engine.run(tiles[:, :32, :32]).shape == (3, 32, 32)
    for name in ("onnxruntime", "openvino"):
        engine, _ = create_engine(name, model, EngineSettings(tile=None, precision="f32"))
        assert engine.tile == model.tile == 48 and engine.describe() == {
            "name": name, "precision": "f32", "model_sha256": model.sha256}
        np.testing.assert_allclose(engine.run(tiles), reference, rtol=1e-4, atol=1e-5 * float(reference.max()))
    assert pick_engine("auto", kind=model.kind) == pick_engine("auto", kind="vae")
    name, precision, why = resolve_engine("auto", "f32", kind="patch-classifier")
    assert name in ("openvino", "onnxruntime", "torch-cpu") and precision == "f32" and why.startswith("auto: ")

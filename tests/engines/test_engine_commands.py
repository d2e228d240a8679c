"""The `semtile engines` and `semtile export` commands, through click's CliRunner."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.engines import AUTO_ORDER, available_engines
from semtile.errors import ModelError
from semtile.models.export import CONFORMANCE_FORMAT, read_conformance, read_export_manifest


def test_engines_lists_every_backend_and_the_auto_pick():
    result = CliRunner().invoke(main, ["engines"])
    assert result.exit_code == 0, result.output
    found = available_engines()
    chosen = next(n for n in AUTO_ORDER if found[n][0])
    lines = result.output.splitlines()
    for name in AUTO_ORDER:
        line = next(line for line in lines if line[2:].split()[:1] == [name])
        ok, why = found[name]
        assert line.startswith("*" if name == chosen else " ")
        assert line.split()[-len(why.split()):] == why.split() and ("yes" if ok else "no") in line.split()
    assert lines[-1] == f"auto picks: {chosen}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "bundle"
    result = CliRunner().invoke(main, ["export", "--out", str(out), "--tile", "64", "--halo", "8"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "onnxruntime f32 (f32): max |difference| from PyTorch" in result.output
    return out


def test_export_records_every_engine_against_pytorch(exported):
    report = read_conformance(exported)  # the one conformance record, as for a defect model
    assert report["format"] == CONFORMANCE_FORMAT and report["kind"] == "bundle" and report["tile"] == 64
    assert set(report["weights_sha256"]) == {"classifier", "segmenter"}
    assert list(report["engines"]) == ["torch-cpu", "onnxruntime f32", "openvino f32", "openvino auto"]
    ort_entry = report["engines"]["onnxruntime f32"]
    assert set(ort_entry["outputs"]) == {"class_logits", "mask_probs"}
    assert ort_entry["precision"] == "f32" and ort_entry["max_rel_difference"] < 1e-4


def test_export_writes_a_verifiable_bundle(exported):
    manifest = read_export_manifest(exported)  # checks every file's sha256
    assert manifest["tile"] == 64 and manifest["halo"] == 8
    assert {"classifier.onnx", "segmenter.onnx", "classifier.pt", "segmenter.pt"} <= set(manifest["sha256"])
    tiles = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)
    n_labels = manifest["architecture"]["classifier"]["n_labels"]
    shapes = {"classifier": (3, n_labels), "segmenter": (3, 1, 64, 64)}
    for network, shape in shapes.items():
        session = ort.InferenceSession(str(exported / f"{network}.onnx"), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"tiles": tiles})
        assert out.shape == shape and out.dtype == np.float32 and np.isfinite(out).all()
        if network == "segmenter":
            assert 0.0 <= out.min() and out.max() <= 1.0


def test_the_manifest_catches_a_changed_file(exported, tmp_path):
    import shutil

    copy = shutil.copytree(exported, tmp_path / "copy")
    data = bytearray((copy / "classifier.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "classifier.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        read_export_manifest(copy)


def test_export_refuses_a_bad_tile(tmp_path):
    result = CliRunner().invoke(main, ["export", "--out", str(tmp_path / "b"), "--tile", "100"])
    assert result.exit_code == 2 and "tile 100 must be a multiple of 16" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)

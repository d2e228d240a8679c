"""semtile's built-in model as a bioimage.io package: valid, passing bioimageio.core's own test, and run back
through ``semtile process --model PACKAGE`` to the same stored masks, labels and ratios as the native model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.errors import SemtileError
from semtile.synth import synth_surface

pytest.importorskip("bioimageio.core")

TILE = 64  # small, so bioimageio.core's test (12 runs at 3 sizes, 2 batch sizes, 2 weights formats) stays quick


def _scan(path: Path, seed: int, shape=(160, 224)) -> Path:
    image, _, bar = synth_surface(np.random.default_rng(seed), shape, 0.4 + 0.1 * seed)
    tifffile.imwrite(path, image)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("bioimageio-export")
    sample = _scan(root / "sample.tif", 0, (192, 192))
    package = root / "builtin.zip"
    result = CliRunner().invoke(main, ["export", "--bioimageio", str(package), "--tile", str(TILE),
                                       "--sample", str(sample)])
    assert result.exit_code == 0, result.output
    assert "bioimageio.spec: valid-format" in result.output
    return root, package


def test_exported_builtin_passes_bioimageio_core_test(exported):
    from bioimageio.core import test_model
    from bioimageio.spec import load_model_description

    _, package = exported
    summary = test_model(package)
    assert summary.status == "passed", summary.format()
    reproduced = {d.loc[1] for d in summary.details if d.name.startswith("Reproduce test outputs")}
    assert reproduced == {"onnx", "pytorch_state_dict"}
    descr = load_model_description(package)
    semtile = descr.config.model_dump()["semtile"]
    assert semtile["tile"] == TILE and semtile["halo"] == TILE // 8 and semtile["step"] == 16
    assert semtile["labels"] == list(range(16))
    assert {"segmenter", "classifier"} == set(semtile["parts"])
    assert semtile["parts"]["segmenter"]["training"]["config"]["epochs"] == 24
    assert [str(o.id) for o in descr.outputs] == ["mask", "class_logits"]
    assert descr.outputs[0].axes[2].halo == TILE // 8
    assert str(descr.inputs[0].preprocessing[-2].id) == "fixed_zero_mean_unit_variance" or any(
        str(p.id) == "fixed_zero_mean_unit_variance" for p in descr.inputs[0].preprocessing)
    assert descr.weights.pytorch_state_dict.architecture.import_from == "semtile.models.bioimageio.network"
    assert descr.weights.onnx.sha256 and descr.weights.pytorch_state_dict.sha256
    assert len(descr.covers) == 1


def test_package_gives_the_native_masks_labels_and_ratios(exported, tmp_path):
    from semtile import open_results

    root, package = exported
    scans = tmp_path / "scans"
    scans.mkdir()
    for seed in (1, 2):
        _scan(scans / f"s{seed}.tif", seed)
    deep = tifffile.imread(_scan(scans / "s16.tif", 3)).astype(np.uint16) * 257
    tifffile.imwrite(scans / "s16.tif", deep)  # 16-bit: the package still sees semtile's gray, as 0..255
    runner = CliRunner()
    native = runner.invoke(main, ["process", str(scans), "--out", str(tmp_path / "native.zarr"), "--tile", str(TILE),
                                  "--engine", "torch-cpu", "--mask-dtype", "float32"])
    assert native.exit_code == 0, native.output
    imported = runner.invoke(main, ["process", str(scans), "--out", str(tmp_path / "package.zarr"),
                                    "--model", str(package), "--engine", "onnxruntime", "--mask-dtype", "float32"])
    assert imported.exit_code == 0, imported.output
    a, b = open_results(tmp_path / "native.zarr"), open_results(tmp_path / "package.zarr")
    assert a.names == b.names and len(a.names) == 3
    for name in a.names:
        x, y = a[name], b[name]
        dm = np.abs(np.asarray(x.stored.mask[...], np.float32) - np.asarray(y.stored.mask[...], np.float32)).max()
        assert dm <= 1e-5
        assert np.array_equal(np.asarray(x.stored.binary_mask[...]), np.asarray(y.stored.binary_mask[...]))
        assert x.label == y.label and x.labels == y.labels
        assert x.adhesive_ratio == y.adhesive_ratio
        record = y.provenance["model"]["bioimageio"]
        assert record["sha256"] and record["version"] == "0.1.0"
        assert y.provenance["engine"]["name"] == "onnxruntime"
        assert y.provenance["parameters"]["tile"] == TILE


def test_without_the_libraries_the_commands_say_what_to_install(monkeypatch, tmp_path):
    from semtile.models.bioimageio import INSTALL, require

    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # as if not installed
    with pytest.raises(SemtileError, match="semtile\\[bioimageio\\]"):
        require()
    result = CliRunner().invoke(main, ["export", "--bioimageio", str(tmp_path / "x.zip")])
    assert result.exit_code == 2 and INSTALL in result.output
    package = tmp_path / "p.zip"
    package.write_bytes(b"PK")
    scan = _scan(tmp_path / "s.tif", 3, (64, 64))
    result = CliRunner().invoke(main, ["process", str(scan), "--out", str(tmp_path / "r.zarr"), "--model", str(package)])
    assert result.exit_code == 2 and INSTALL in result.output


def test_defect_models_export_where_they_fit_the_spec(tmp_path):
    from bioimageio.core import test_model
    from bioimageio.spec import load_model_description

    from semtile.inference.bioimageio.export import export_bioimageio
    from semtile.models.defect_networks import DefectArchitecture
    from semtile.models.io import load_model, save_model
    from semtile.models.networks import build_model

    sample = _scan(tmp_path / "sample.tif", 4, (96, 96))
    arch = DefectArchitecture("autoencoder", c=4, stages=2, normalise="fixed")
    weights = save_model(build_model(arch), arch, path=tmp_path / "ae.pt", tile=32, halo=4)
    made = export_bioimageio(load_model(weights), tmp_path / "ae.zip", sample=sample)
    assert made.validation == "valid-format" and (made.tile, made.halo) == (32, 4)
    assert test_model(tmp_path / "ae.zip").status == "passed"
    descr = load_model_description(tmp_path / "ae.zip")
    assert [str(o.id) for o in descr.outputs] == ["anomaly_map"]
    assert descr.config.model_dump()["semtile"]["kind"] == "autoencoder"

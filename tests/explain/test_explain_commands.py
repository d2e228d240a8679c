"""`semtile process` -> `semtile explain` -> `semtile evaluate --masks`, and `semtile masks auto`, on real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.results import open_results


def _run(*args):
    result = CliRunner().invoke(main, ["--log-text", *map(str, args)], catch_exceptions=False)
    return result


@pytest.mark.slow
def test_explain_then_evaluate_with_masks(tiny_dataset, tiny_bundle, tmp_path):
    store = tmp_path / "r.zarr"
    done = _run("process", tiny_dataset / "images", "--out", store, "--model", tiny_bundle, "--engine", "torch-cpu",
                "--tile", "32", "--threads", "1")
    assert done.exit_code == 0, done.output
    # A non-torch engine is said out loud, and the maps are computed on torch.
    done = _run("explain", store, "--engine", "onnxruntime", "--threads", "1")
    assert done.exit_code == 0, done.output
    assert "cannot give" in done.output and "explained 8, skipped 0, failed 0" in done.output
    results = open_results(store)
    scan = results[results.names[0]]
    assert {"gradcam", "cam"} <= set(scan.maps)
    heat = scan.map("gradcam").compute()
    assert heat.shape == scan.mask.shape and heat.dtype == np.float32 and (heat >= 0).all() and heat.max() > 0
    attrs = scan.stored.maps["gradcam"]
    assert attrs["engine"] == "torch-cpu" and attrs["label"] == scan.label and attrs["tile"] == 32
    # A rerun skips what is up to date; a chosen class is recomputed.
    assert "skipped 8" in _run("explain", store, "--threads", "1").output
    done = _run("explain", store, "--class", "2", "--names", results.names[0], "--kinds", "cam", "--threads", "1")
    assert "for label 2" in done.output
    done = _run("explain", store, "--class", "7", "--threads", "1")
    assert done.exit_code != 0 and "not one of the model's labels" in done.output

    out = tmp_path / "eval"
    done = _run("evaluate", store, "--masks", tiny_dataset / "masks", "--out", out, "--val-fraction", "0.5")
    assert done.exit_code == 0, done.output
    table = (out / "explanations.md").read_text()
    for row in ("| Segmenter mask, fixed τ |", "| Grad-CAM, τ from validation |", "| CAM, Otsu |"):
        assert row in table
    report = json.loads((out / "explanations.json").read_text())
    assert not set(report["validation"]) & set(report["test"])
    assert set(report["validation_tau"]) == {"segmenter", "gradcam", "cam"}
    assert (out / "explanations.png").stat().st_size > 10_000
    assert (out / "explanations.csv").read_text().count("\n") > 3 * 3 * len(report["test"])


def test_masks_auto_proposes_a_mask_per_image(tiny_dataset, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for p in sorted((tiny_dataset / "images").glob("*.tif"))[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    done = _run("masks", "auto", images, "--out", tmp_path / "m", "--beta", "0.05", "--slic-segments", "4")
    assert done.exit_code == 0, done.output
    assert "masks: 2 written, 0 failed" in done.output
    for p in images.glob("*.tif"):
        m = tifffile.imread(tmp_path / "m" / p.name)
        assert m.dtype == np.uint8 and m.shape == tifffile.imread(p).shape[:2] and set(np.unique(m)) <= {0, 1}
        assert m.any()

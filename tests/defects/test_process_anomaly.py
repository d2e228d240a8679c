"""``semtile process --anomaly MODEL``: whole-scan anomaly maps in the store, in memory and region by region.

Real TIFFs, a real (tiny) autoencoder trained on defect-free copper, the real
runner and store. The in-memory map is the merger's blend of the anomaly
model's own tiles over the normalised scan; the region-by-region one
(``--region-pixels 0``, blocks that cross a region boundary) equals it to
1e-5, so neither has seams. Then: reruns, the run table, calibration, scoring
the stored maps against the defect masks, and the export of a defect model.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.defects.anomaly import anomaly_map
from semtile.defects.anomaly_pass import anomaly_pass
from semtile.engines import EngineSettings
from semtile.execution.batch import run_process
from semtile.inference.options import ProcessOptions
from semtile.inference.segment import segment_pass
from semtile.io.tiff import open_scan
from semtile.models.io import load_bundle, load_model
from semtile.results import open_results

OPTIONS = ["--tile", "64", "--halo", "8", "--batch-size", "8", "--engine", "torch-cpu"]


def run_cli(*args):
    return CliRunner().invoke(main, ["--log-json", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def scans(copper_defects, tmp_path_factory) -> Path:
    """Two copper scans with defects, and one wide enough (2100 columns) for two output regions."""
    folder = tmp_path_factory.mktemp("anomaly-scans")
    for image in sorted((copper_defects / "images").glob("*.tif"))[:2]:
        shutil.copy(image, folder / image.name)
    import tifffile

    rows = [tifffile.imread(image) for image in sorted((copper_defects / "images").glob("*.tif"))]
    wide = np.concatenate([rows[i % len(rows)][:160] for i in range(9)], axis=1)[:, :2100]
    tifffile.imwrite(folder / "wide.tif", wide)
    return folder


@pytest.fixture(scope="module")
def in_memory(scans, tiny_bundle, copper_autoencoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mem") / "mem.zarr"
    result = run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS,
                     "--anomaly", copper_autoencoder, "--anomaly-engine", "torch-cpu")
    assert result.exit_code == 0, result.output
    return out


def _valid(path: Path) -> np.ndarray:
    with open_scan(path) as scan:
        return np.asarray(scan.valid().compute(), dtype=np.float32)


def test_process_anomaly_stores_the_blended_map_and_its_fraction(in_memory, scans, copper_autoencoder):
    model = load_model(copper_autoencoder, expect="autoencoder")
    results = open_results(in_memory)
    assert len(results) == 3
    for image in results:
        assert "anomaly" in image.maps and len(image.maps["anomaly"].paths) >= 1
        stored = np.asarray(image.map("anomaly").compute())
        direct, fraction = anomaly_map(_valid(image.source), model)  # the same tiled, blended path
        assert stored.shape == direct.shape
        assert np.abs(stored - direct).max() <= 1e-6
        attrs = image.attrs
        assert attrs["anomaly_fraction"] == pytest.approx(fraction, abs=1e-6)
        assert attrs["anomaly"]["threshold"] == model.threshold and attrs["anomaly"]["threshold_source"] == "card"
        assert attrs["anomaly"]["model"]["sha256"] == model.sha256
        assert attrs["anomaly"]["engine"]["name"] == "torch-cpu"
        assert attrs["anomaly"]["parameters"]["tile"] == model.tile == 128
        prov = image.provenance
        assert prov["model"]["anomaly"]["sha256"] == model.sha256 and prov["engine"]["anomaly"]["name"] == "torch-cpu"
        assert image.record["anomaly"]["model_sha256"] == model.sha256  # the rerun key
        assert image.stored.maps["anomaly"]["kind"] == "anomaly"
    table = list(csv.DictReader((in_memory.parent / "mem.csv").open()))
    assert len(table) == 3 and all(float(row["anomaly_fraction"]) >= 0 for row in table)
    assert "anomaly_fraction" in results.table.columns


def test_region_by_region_anomaly_map_equals_the_in_memory_one(in_memory, scans, tiny_bundle, copper_autoencoder,
                                                               tmp_path):
    spec = anomaly_pass(copper_autoencoder, engine="torch-cpu")
    out = tmp_path / "regions.zarr"
    options = ProcessOptions(tile=64, halo=8, batch_size=8, region_pixels=0, block_pixels=200)
    summary = run_process(sorted(scans.iterdir()), out, options=options,
                          passes=[segment_pass(load_bundle(tiny_bundle), "torch-cpu",
                                               EngineSettings(tile=64, halo=8, batch_size=8), options), spec])
    assert summary.exit_code == 0, [o.error for o in summary.failed]
    memory, regions = open_results(in_memory), open_results(out)
    assert memory.names == regions.names
    worst = 0.0
    for name in memory.names:
        a, b = memory[name], regions[name]
        assert b.attrs["regions"]["anomaly_blocks"] > 1
        assert len(a.maps["anomaly"].paths) == len(b.maps["anomaly"].paths)
        for level in range(len(a.maps["anomaly"].paths)):
            diff = float(np.abs(a.map("anomaly", level).compute() - b.map("anomaly", level).compute()).max())
            worst = max(worst, diff)
        assert b.attrs["anomaly_fraction"] == pytest.approx(a.attrs["anomaly_fraction"], abs=1e-3)
        assert b.record["anomaly"] == a.record["anomaly"]
    print(f"region by region vs in memory: max |difference| of the anomaly maps {worst:.2e}")
    assert worst <= 1e-5
    wide = regions["wide"]
    assert wide.attrs["regions"]["count"] == 2  # the map crosses the region boundary at x = 2048 without a seam


def test_reruns_skip_until_the_anomaly_model_or_threshold_changes(in_memory, scans, tiny_bundle, copper_autoencoder,
                                                                    tmp_path):
    store = tmp_path / "r.zarr"
    shutil.copytree(in_memory, store)
    args = ["process", scans, "--out", store, "--model", tiny_bundle, *OPTIONS,
            "--anomaly", copper_autoencoder, "--anomaly-engine", "torch-cpu"]
    again = run_cli(*args)
    assert again.exit_code == 0 and "0 done, 3 skipped" in again.stderr
    other = run_cli(*args, "--anomaly-threshold", "0.5")
    assert other.exit_code == 0 and "3 done, 0 skipped" in other.stderr
    results = open_results(store)
    assert {results[n].attrs["anomaly"]["threshold"] for n in results.names} == {0.5}
    assert {results[n].attrs["anomaly"]["threshold_source"] for n in results.names} == {"option"}
    first = sorted(scans.glob("t*.tif"))[0]
    plain = run_cli("process", first, "--out", tmp_path / "plain.zarr", "--model", tiny_bundle, *OPTIONS)
    assert plain.exit_code == 0
    assert "anomaly_fraction" not in (tmp_path / "plain.csv").read_text().splitlines()[0]
    assert not open_results(tmp_path / "plain.zarr")[open_results(tmp_path / "plain.zarr").names[0]].maps
    bad = run_cli("process", scans, "--out", tmp_path / "x.zarr", "--model", tiny_bundle, *OPTIONS,
                  "--anomaly", tiny_bundle / "segmenter.pt")
    assert bad.exit_code == 2 and "the card says segmenter" in bad.output


def test_calibrate_then_score_the_stored_maps_against_the_defect_masks(in_memory, copper_autoencoder, copper_normal,
                                                                       copper_defects, tmp_path):
    model = tmp_path / "cu.pt"
    shutil.copyfile(copper_autoencoder, model)
    shutil.copyfile(copper_autoencoder.with_suffix(".json"), model.with_suffix(".json"))
    result = run_cli("train", "calibrate-anomaly", model, copper_normal / "images", "--fpr", "0.02",
                     "--engine", "torch-cpu")
    assert result.exit_code == 0, result.output
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["threshold"]["fpr"] == 0.02 and card["threshold"]["images"] == 6
    assert anomaly_pass(model, engine="torch-cpu").threshold == card["threshold"]["value"]

    out = tmp_path / "eval"
    scored = run_cli("evaluate", in_memory, "--defect-masks", copper_defects, "--out", out)
    assert scored.exit_code == 0, scored.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["results_without_mask"] == ["wide.tif"] and metrics["images"] == 2
    assert metrics["pixels"]["pixel_auroc"] > 0.8, metrics
    assert "Pixel AUROC" in scored.output
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 2 and all(float(r["anomaly_fraction"]) >= 0 for r in rows)


def test_export_a_defect_model_checks_it_against_pytorch(copper_autoencoder, tmp_path):
    result = run_cli("export", copper_autoencoder, "--out", tmp_path / "export")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "export" / "conformance.json").read_text())
    assert (tmp_path / "export" / "model.onnx").is_file() and report["tile"] == 128
    ort = report["engines"]["onnxruntime f32"]
    assert "error" in ort or ort["max_rel_difference"] < 1e-4
    assert "onnxruntime" in result.output


@pytest.mark.slow
def test_anomaly_maps_on_a_dask_cluster_equal_the_in_memory_ones(in_memory, scans, tiny_bundle, copper_autoencoder,
                                                                 tmp_path):
    """--anomaly on real dask.distributed worker processes: small scans in a group task, the wide one region
    by region with its anomaly blocks as tasks; the same maps and fractions as one process."""
    pytest.importorskip("distributed")
    from semtile.execution.distributed import ClusterSpec

    spec = anomaly_pass(copper_autoencoder, engine="torch-cpu")
    out = tmp_path / "cluster.zarr"
    options = ProcessOptions(tile=64, halo=8, batch_size=8, region_pixels=200_000, block_pixels=200)
    summary = run_process(sorted(scans.iterdir()), out, options=options,
                          passes=[segment_pass(load_bundle(tiny_bundle), "torch-cpu",
                                               EngineSettings(tile=64, halo=8, batch_size=8, threads=1), options),
                                  spec],
                          cluster=ClusterSpec(kind="local", workers=1))
    assert summary.exit_code == 0, [o.error for o in summary.failed]
    memory, cluster = open_results(in_memory), open_results(out)
    assert memory.names == cluster.names
    assert "regions" in cluster["wide"].attrs and "regions" not in cluster[memory.names[0]].attrs
    for name in memory.names:
        a, b = memory[name], cluster[name]
        diff = float(np.abs(a.map("anomaly").compute() - b.map("anomaly").compute()).max())
        assert diff <= 1e-5, (name, diff)
        assert b.attrs["anomaly_fraction"] == pytest.approx(a.attrs["anomaly_fraction"], abs=1e-3)

"""A bioimage.io package that is not semtile's, built here by hand, through ``semtile process --model PACKAGE``.

Channels-last input with an extra size-1 axis, percentile normalisation,
TorchScript and ONNX weights, a binarize threshold and a second, 2-channel
output (tests/models/bioimageio_foreign.py). Its masks (stored as float32
here) must equal bioimageio.core's prediction of the whole image away from tile seams (the
statistics are the whole scan's, not a tile's), on every engine, in memory
and region by region.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.synth import synth_surface

pytest.importorskip("bioimageio.core")
sys.path.insert(0, str(Path(__file__).parent))
from bioimageio_foreign import HALO, RADIUS, THRESHOLD, away_from_seams, build_foreign_package, core_prediction


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    root = tmp_path_factory.mktemp("bioimageio-foreign")
    image, _, bar = synth_surface(np.random.default_rng(5), (128, 160), 0.5)
    package = build_foreign_package(root / "pkg", image)
    scans = root / "scans"
    scans.mkdir()
    raws = {}
    for seed, shape in ((11, (230, 300)), (12, (200, 170))):
        image, _, bar = synth_surface(np.random.default_rng(seed), shape, 0.3)
        image[: image.shape[0] // 2] //= 2  # a dark half: per-tile statistics would disagree between tiles
        tifffile.imwrite(scans / f"f{seed}.tif", image)
        raws[f"f{seed}"] = image[: image.shape[0] - bar]
    return root, package, scans, raws


def _process(scans: Path, out: Path, model, *extra) -> None:
    result = CliRunner().invoke(main, ["process", str(scans), "--out", str(out), "--model", str(model),
                                       "--tile", "96", "--mask-dtype", "float32", *map(str, extra)])
    assert result.exit_code == 0, result.output


def test_foreign_package_matches_bioimageio_core_away_from_seams(foreign, tmp_path):
    from semtile import open_results

    root, package, scans, raws = foreign
    _process(scans, tmp_path / "r.zarr", package, "--engine", "onnxruntime")
    results = open_results(tmp_path / "r.zarr")
    assert sorted(results.names) == sorted(raws)
    for name, raw in raws.items():
        res = results[name]
        mask = np.asarray(res.stored.mask[...], np.float32)
        assert mask.shape == raw.shape
        whole = core_prediction(package, raw)
        core = 96 - 2 * HALO  # the package's halo is semtile's
        keep = away_from_seams(mask.shape, range(core, mask.shape[0], core), range(core, mask.shape[1], core),
                               RADIUS + HALO, RADIUS)
        assert keep.sum() > 0.1 * keep.size
        assert np.abs(mask - whole)[keep].max() <= 1e-4
        # The package's binarize threshold is the binary mask's rule; its ratio is the binary mask's share.
        binary = np.asarray(res.stored.binary_mask[...])
        assert np.array_equal(binary, mask > THRESHOLD)
        assert res.adhesive_ratio == pytest.approx(binary.mean())
        assert res.label is None and res.labels == []
        assert {"edges_a", "edges_b"} <= set(res.maps)  # the second output, a named map per channel
        assert np.asarray(res.map("edges_b")[...]).shape == raw.shape
        record = res.provenance["model"]["bioimageio"]
        assert record["version"] == "1.2.3" and record["name"] == "dilated test net"
        assert len(record["sha256"]) == 64 and set(record["weights"]) == {"onnx", "torchscript"}
        assert res.attrs["bioimageio"]["statistics"] == "whole scan"


def test_engines_folder_form_and_region_by_region_agree(foreign, tmp_path):
    from semtile import open_results

    root, package, scans, raws = foreign
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    _process(scans, tmp_path / "ort.zarr", package, "--engine", "onnxruntime")
    _process(scans, tmp_path / "torch.zarr", folder / "rdf.yaml", "--engine", "torch-cpu")  # TorchScript
    _process(scans, tmp_path / "ov.zarr", folder, "--engine", "openvino", "--region-pixels", "0")  # out of core
    base = open_results(tmp_path / "ort.zarr")
    for other in ("torch.zarr", "ov.zarr"):
        got = open_results(tmp_path / other)
        for name in raws:
            a = np.asarray(base[name].stored.mask[...], np.float32)
            b = np.asarray(got[name].stored.mask[...], np.float32)
            assert np.abs(a - b).max() <= 1e-5, other
    assert open_results(tmp_path / "torch.zarr")[next(iter(raws))].provenance["engine"]["weights"] == "torchscript"


def test_whole_scan_statistics_not_per_tile(foreign):
    from semtile.models.bioimageio.preprocess import PreprocessedScan, scan_statistics

    _, _, _, raws = foreign
    raw = next(iter(raws.values()))
    gray = raw.astype(np.float32) / 255
    ops = (("scale_range", {"min_percentile": 1.0, "max_percentile": 99.8, "eps": 1e-6}),)
    stats = scan_statistics(gray, ops, 255.0)
    lo, hi = np.quantile(raw.astype(np.float64), [0.01, 0.998])
    assert stats["percentiles"]["1.0"] == pytest.approx(lo, abs=1e-3)
    assert stats["percentiles"]["99.8"] == pytest.approx(hi, abs=1e-3)
    view = PreprocessedScan(gray, ops, 255.0, stats)
    whole = (raw - lo) / (hi - lo + 1e-6)
    assert np.abs(view[:40, 10:50] - whole[:40, 10:50]).max() < 1e-4  # a dark-half window, scaled as the scan


def test_packages_semtile_cannot_run_are_refused_naming_the_file(tmp_path):
    not_zip = tmp_path / "broken.zip"
    not_zip.write_bytes(b"not a zip at all")
    scan = tmp_path / "s.tif"
    tifffile.imwrite(scan, synth_surface(np.random.default_rng(1), (64, 64), 0.5)[0])
    result = CliRunner().invoke(main, ["process", str(scan), "--out", str(tmp_path / "r.zarr"),
                                       "--model", str(not_zip)])
    assert result.exit_code == 2 and "broken.zip" in result.output and "zip" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "rdf.yaml").write_text("type: model\nformat_version: 0.5.4\nname: nothing\n")
    result = CliRunner().invoke(main, ["process", str(scan), "--out", str(tmp_path / "r2.zarr"),
                                       "--model", str(empty)])
    assert result.exit_code == 2 and "not a valid bioimage.io model package" in result.output


def test_dask_workers_run_the_package_unchanged(foreign, tmp_path):
    from semtile import open_results

    _, package, scans, raws = foreign
    _process(scans, tmp_path / "local.zarr", package, "--engine", "onnxruntime")
    # One worker process, every scan region by region: the package travels pickled, workers build its engine.
    _process(scans, tmp_path / "dask.zarr", package, "--engine", "onnxruntime", "--cluster", "local", "--workers", 1,
             "--region-pixels", "0")
    a, b = open_results(tmp_path / "local.zarr"), open_results(tmp_path / "dask.zarr")
    for name in raws:
        assert np.abs(np.asarray(a[name].stored.mask[...]) - np.asarray(b[name].stored.mask[...])).max() <= 1e-6
        assert b[name].provenance["model"]["bioimageio"]["version"] == "1.2.3"


def _gpu_engine_or_skip(name: str) -> None:
    from semtile.engines.registry import available_engines

    ok, why = available_engines().get(name, (False, "unknown engine"))
    if not ok:
        pytest.skip(f"{name}: {why}")


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["tensorrt", "torch-cuda"])
def test_gpu_engines_run_the_package_like_the_cpu(foreign, tmp_path, engine):
    """TensorRT builds the package's ONNX (then loads it from its cache), torch-cuda its TorchScript: both give
    the CPU's masks at f32, in memory and region by region."""
    from semtile import open_results

    _gpu_engine_or_skip(engine)
    root, package, scans, raws = foreign
    _process(scans, tmp_path / "cpu.zarr", package, "--engine", "onnxruntime")
    _process(scans, tmp_path / "gpu.zarr", package, "--engine", engine)
    _process(scans, tmp_path / "again.zarr", package, "--engine", engine, "--region-pixels", "0")
    base = open_results(tmp_path / "cpu.zarr")
    for other in ("gpu.zarr", "again.zarr"):
        got = open_results(tmp_path / other)
        for name in raws:
            a = np.asarray(base[name].stored.mask[...], np.float32)
            b = np.asarray(got[name].stored.mask[...], np.float32)
            assert np.abs(a - b).max() <= 1e-4, (engine, other)
            assert (np.asarray(base[name].stored.labels[...]) != np.asarray(got[name].stored.labels[...])).mean() \
                <= 1e-3
    facts = open_results(tmp_path / "again.zarr")[next(iter(raws))].provenance["engine"]
    assert facts["name"] == engine and facts["device"].startswith("cuda")
    if engine == "tensorrt":
        assert facts["engine_cache"]["loaded_from_cache"] is True  # built once by the first run


def test_an_engine_that_cannot_run_here_is_refused_with_why(foreign, tmp_path):
    from semtile.engines.registry import available_engines

    root, package, scans, raws = foreign
    for engine in ("tensorrt", "torch-cuda"):
        ok, why = available_engines()[engine]
        if ok:
            continue
        result = CliRunner().invoke(main, ["process", str(scans), "--out", str(tmp_path / f"{engine}.zarr"),
                                           "--model", str(package), "--tile", "96", "--engine", engine])
        assert result.exit_code == 2, result.output
        assert f"--engine {engine}: {why}" in result.output
        assert not (tmp_path / f"{engine}.zarr" / "results.csv").exists()

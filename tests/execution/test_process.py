"""End-to-end behaviour of ``semtile process`` on real TIFF files, Zarr stores and a real engine."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.engines import AUTO_ORDER, EngineSettings, create_engine
from semtile.execution.local import ProcessOptions, analyse_scan, process_scans
from semtile.inference.segment import SegmentPass
from semtile.io.discover import find_scans
from semtile.models.io import load_bundle
from semtile.store import open_store

OPTIONS = ["--tile", "64", "--halo", "8", "--batch-size", "3", "--engine", "torch-cpu"]


def run_cli(*args: str):
    return CliRunner().invoke(main, ["--log-json", *map(str, args)], catch_exceptions=False)


def read_table(path: Path) -> dict[str, dict]:
    with path.open(newline="") as handle:
        return {Path(row["path"]).name: row for row in csv.DictReader(handle)}


@pytest.fixture()
def mixed_folder(tmp_path, tiny_dataset) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    good = sorted((tiny_dataset / "images").glob("*.tif"))[:3]
    for path in good:
        shutil.copy(path, folder / path.name)
    data = good[0].read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 3])
    (folder / "notes.tif").write_text("this is a lab note, not an image\n")
    (folder / "empty.tif").write_bytes(b"")
    return folder


def test_bad_files_are_reported_and_good_ones_written(mixed_folder, tiny_bundle, tmp_path):
    out = tmp_path / "results.zarr"
    result = run_cli("process", mixed_folder, "--out", out, "--model", tiny_bundle, *OPTIONS)
    assert result.exit_code == 1
    table = read_table(tmp_path / "results.csv")
    assert len(table) == 6
    assert table["truncated.tif"]["status"] == "error" and "truncated" in table["truncated.tif"]["error"]
    assert table["notes.tif"]["status"] == "error" and "not a TIFF" in table["notes.tif"]["error"]
    assert table["empty.tif"]["status"] == "error" and "empty" in table["empty.tif"]["error"]
    for name in ("truncated.tif", "notes.tif", "empty.tif"):
        assert name in result.stderr  # the failure list names each bad file
    good = [name for name, row in table.items() if row["status"] == "ok"]
    assert len(good) == 3
    assert sorted(open_store(out, mode="r").names()) == sorted(Path(n).stem for n in good)
    assert sorted(zarr.open_group(str(out), mode="r").group_keys()) == sorted(Path(n).stem for n in good)


def test_results_hold_masks_labels_ratio_and_provenance(tiny_dataset, tiny_bundle, tmp_path):
    image = sorted((tiny_dataset / "images").glob("*.tif"))[0]
    out = tmp_path / "r.zarr"
    result = run_cli("process", image, "--out", out, "--model", tiny_bundle, *OPTIONS)
    assert result.exit_code == 0, result.stderr
    stored = open_store(out, mode="r").read(image.stem)
    attrs = stored.attrs
    frame = tifffile.imread(image)
    bar = attrs["databar_rows"]
    assert bar == 24  # the synthetic bar: a white rule set off from the image
    mask, binary = np.asarray(stored.mask[...]), np.asarray(stored.binary_mask[...])
    assert mask.shape == binary.shape == (frame.shape[0] - bar, frame.shape[1])
    assert mask.dtype == np.float32 and 0.0 <= mask.min() and mask.max() <= 1.0
    np.testing.assert_array_equal(binary, mask >= 0.5)
    assert stored.adhesive_ratio == pytest.approx(float(binary.mean()))
    # The normalised scan is stored too (the OME-Zarr image the masks lie over).
    np.testing.assert_allclose(np.asarray(stored.image[...]), frame[: frame.shape[0] - bar] / 255.0, atol=1e-4)
    probs = np.asarray(stored.class_probs[...])
    assert probs.shape == (4,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    # Ordered (integer) labels: the median of the image's class distribution.
    assert attrs["label_rule"] == "median"
    assert stored.label == stored.labels[int(np.searchsorted(np.cumsum(probs), 0.5))]
    assert attrs["pixel_size_m"] == pytest.approx(1e-7)
    prov = attrs["provenance"]
    import hashlib
    assert prov["input"]["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert len(prov["model"]["segmenter"]["sha256"]) == 64 and len(prov["model"]["classifier"]["sha256"]) == 64
    assert prov["engine"]["name"] in AUTO_ORDER and prov["engine"]["precision"]
    assert prov["parameters"]["tile"] == 64 and prov["parameters"]["halo"] == 8
    assert {"torch", "numpy", "zarr", "dask", "tifffile", "semtile"} <= set(prov["versions"])
    row = read_table(tmp_path / "r.csv")[image.name]
    assert row["status"] == "ok" and float(row["adhesive_ratio"]) == pytest.approx(stored.adhesive_ratio, abs=1e-6)
    assert int(row["databar_rows"]) == bar


def test_rerun_keeps_other_results_and_names_are_unique(tiny_dataset, tiny_bundle, tmp_path):
    images = sorted((tiny_dataset / "images").glob("*.tif"))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(images[0], a / "scan one.tif")
    shutil.copy(images[1], b / "scan one.tif")  # same file name, another scan
    out = tmp_path / "r.zarr"
    assert run_cli("process", a, b, "--out", out, "--model", tiny_bundle, *OPTIONS).exit_code == 0
    store = open_store(out, mode="r")
    assert store.names() == ["scan_one", "scan_one-2"]
    first = store.read("scan_one").mask[...]
    # A second run on one of them (forced: it is up to date) replaces only its own group.
    assert run_cli("process", b, "--out", out, "--model", tiny_bundle, *OPTIONS, "--force").exit_code == 0
    store = open_store(out, mode="r")
    assert store.names() == ["scan_one", "scan_one-2"]
    np.testing.assert_array_equal(store.read("scan_one").mask[...], first)
    assert store.read("scan_one-2").source == (b / "scan one.tif").resolve()


@pytest.mark.parametrize("kind", ["uint16", "palette", "rgb", "small", "constant"])
def test_other_layouts_are_processed(kind, tiny_bundle, tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random((100, 90)) * 255).astype(np.uint8)
    path = tmp_path / f"{kind}.tif"
    if kind == "uint16":
        tifffile.imwrite(path, base.astype(np.uint16) * 257)
    elif kind == "palette":
        cmap = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))
        tifffile.imwrite(path, base, photometric="palette", colormap=cmap)
    elif kind == "rgb":
        tifffile.imwrite(path, np.stack([base] * 3, axis=-1), photometric="rgb")
    elif kind == "small":  # smaller than one 64-pixel tile
        tifffile.imwrite(path, base[:20, :30])
    else:
        tifffile.imwrite(path, np.full((70, 70), 128, np.uint8))
    bundle = load_bundle(tiny_bundle)
    engine, _ = create_engine("torch-cpu", bundle, EngineSettings(tile=64, halo=8))
    options = ProcessOptions(tile=64, halo=8, batch_size=4)
    summary = process_scans(find_scans([path]), tmp_path / "r.zarr", options=options,
                            passes=[SegmentPass.of_engine(engine, bundle, options)], table=tmp_path / "r.csv")
    assert summary.outcomes[0].status == "ok", summary.outcomes[0].error
    stored = open_store(tmp_path / "r.zarr", mode="r").read(kind)
    expected = {"small": (20, 30), "constant": (70, 70)}.get(kind, (100, 90))
    assert stored.mask.shape == expected


def test_gray_conversions_give_the_same_mask(tiny_bundle, tmp_path):
    """8-bit, 16-bit and palette versions of one scan are the same image to the engine."""
    rng = np.random.default_rng(1)
    base = (rng.random((96, 96)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a8.tif", base)
    tifffile.imwrite(tmp_path / "b16.tif", base.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "c_pal.tif", base, photometric="palette",
                     colormap=np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1)))
    out = tmp_path / "r.zarr"
    assert run_cli("process", tmp_path, "--out", out, "--model", tiny_bundle, "--databar-rows", "0", *OPTIONS).exit_code == 0
    store = open_store(out, mode="r")
    ref = store.read("a8").mask[...]
    for name in ("b16", "c_pal"):
        np.testing.assert_allclose(store.read(name).mask[...], ref, atol=1 / 255 + 1e-6)  # the stored (uint8) step


def test_usage_errors_exit_2(tmp_path, tiny_bundle):
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert run_cli("process", empty, "--out", tmp_path / "r.zarr").exit_code == 2
    assert run_cli("process", tmp_path / "missing", "--out", tmp_path / "r.zarr").exit_code == 2
    (empty / "x.tif").write_bytes(b"")
    bad_tile = run_cli("process", empty, "--out", tmp_path / "r.zarr", "--model", tiny_bundle, "--tile", "66")
    assert bad_tile.exit_code == 2 and "multiple of 4" in bad_tile.stderr


def test_version():
    result = run_cli("--version")
    assert result.exit_code == 0 and "semtile, version" in result.stdout


def test_scratch_preparation_paths_agree(tiny_dataset, tiny_bundle, tmp_path, monkeypatch):
    """Scans are prepared in memory; one over the region threshold through a scratch copy, on the calling thread
    or through Dask's thread pool, into scratch chunks narrower than the scan: the masks are identical each way."""
    import semtile.inference.scratch as scratch

    scans = sorted((tiny_dataset / "images").glob("*.tif"))[:2]
    bundle = load_bundle(tiny_bundle)
    engine, _ = create_engine("torch-cpu", bundle, EngineSettings(tile=64, halo=8, batch_size=3))
    masks = []
    for _name, pixels, band, region_pixels in (("memory", 2**30, 4096, None), ("sync", 2**30, 4096, 0),
                                              ("threads", 0, 40, 0)):
        monkeypatch.setattr(scratch, "SYNCHRONOUS_PREPARE_PIXELS", pixels)
        monkeypatch.setattr(scratch, "SCRATCH_BAND_COLS", band)
        options = ProcessOptions(tile=64, halo=8, batch_size=3,
                                 **({} if region_pixels is None else {"region_pixels": region_pixels}))
        passes = [SegmentPass.of_engine(engine, bundle, options)]
        masks.append([analyse_scan(p, passes, options, tmp_path)[0].mask for p in scans])
    for a, b, c in zip(*masks):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_hostile_inputs_beside_good_scans(tiny_dataset, tiny_bundle, tmp_path):
    """A header bomb, a symlink loop and a bad budget never stop the batch; the good scans are written."""
    folder = tmp_path / "scans"
    folder.mkdir()
    good = sorted((tiny_dataset / "images").glob("*.tif"))[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    tifffile.imwrite(folder / "bomb.tif", np.zeros((100, 100), np.uint8))
    _claim_dimensions(folder / "bomb.tif", 100000, 100000)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    out = tmp_path / "r.zarr"
    result = run_cli("process", folder, "--out", out, "--model", tiny_bundle, *OPTIONS)
    assert result.exit_code == 1, result.stderr
    rows = read_table(tmp_path / "r.csv")
    assert rows["bomb.tif"]["status"] == "error" and "gigapixels" in rows["bomb.tif"]["error"]
    assert rows["loop"]["status"] == "error" and "symlink loop" in rows["loop"]["error"]
    assert sorted(open_store(out, mode="r").names()) == sorted(p.stem for p in good)
    # A budget below the good scans' size refuses them too, from the header, with the option named.
    small = run_cli("process", good[0], "--out", tmp_path / "s.zarr", "--model", tiny_bundle, *OPTIONS,
                    "--max-pixels", "1000")
    assert small.exit_code == 1 and "--max-pixels" in small.stderr


def _claim_dimensions(path, rows: int, cols: int) -> None:
    """Rewrite ImageLength/ImageWidth in the first IFD of a little-endian classic TIFF."""
    import struct

    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            struct.pack_into("<HHII", data, entry, tag, 4, 1, cols if tag == 256 else rows)
    path.write_bytes(bytes(data))

"""``semtile process`` on a large scan region by region equals the in-memory path, and stays within its bounds."""

from __future__ import annotations

import numpy as np
import zarr
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.engines import EngineSettings
from semtile.execution.batch import run_process
from semtile.inference.options import ProcessOptions
from semtile.inference.regions import RegionPlan
from semtile.inference.segment import segment_pass
from semtile.inference.split import TileGrid
from semtile.models.io import load_bundle

from scan_compare import assert_same_results, write_large_scan

OPTIONS = ["--tile", "64", "--halo", "8", "--batch-size", "8", "--engine", "torch-cpu"]


def run_cli(*args):
    return CliRunner().invoke(main, ["--log-json", *map(str, args)], catch_exceptions=False)


def test_region_by_region_equals_in_memory(tmp_path, tiny_bundle):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_large_scan(scans / "wide.tif", (560, 2150), seed=1)  # two regions across, blocks inside and across
    result = run_cli("process", scans, "--out", tmp_path / "memory.zarr", "--model", tiny_bundle, *OPTIONS)
    assert result.exit_code == 0, result.output
    # Region by region, with blocks small enough that they also cross the region boundary.
    options = ProcessOptions(tile=64, halo=8, batch_size=8, region_pixels=0, block_pixels=500)
    summary = run_process(sorted(scans.iterdir()), tmp_path / "regions.zarr", options=options,
                          passes=[segment_pass(load_bundle(tiny_bundle), "torch-cpu",
                                               EngineSettings(tile=64, halo=8, batch_size=8), options)])
    assert summary.exit_code == 0
    names = assert_same_results(tmp_path / "regions.zarr", tmp_path / "memory.zarr")
    group = zarr.open_group(str(tmp_path / "regions.zarr" / names[0]), mode="r")
    regions = group.attrs["semtile"]["attrs"]["regions"]
    assert regions["count"] == 2 and regions["blocks"] > 1
    # The region boundary (x = 2048) shows no seam: the mask's step across it is like its steps elsewhere.
    mask = group["mask"][...].astype(np.float32)  # stored as uint8: differences in float
    steps = np.abs(np.diff(mask, axis=1)).mean(axis=0)
    assert steps[2047] <= 3 * np.median(steps) + 1e-6
    assert not list((tmp_path / "regions.zarr" / ".semtile" / "tmp").iterdir())  # staged result committed


def test_a_bad_large_scan_fails_alone(tmp_path, tiny_bundle, tiny_dataset):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_large_scan(scans / "big.tif", (700, 900))
    data = (scans / "big.tif").read_bytes()
    (scans / "cut.tif").write_bytes(data[: len(data) // 2])  # a valid header, truncated tiles
    result = run_cli("process", scans, "--out", tmp_path / "r.zarr", "--model", tiny_bundle, *OPTIONS,
                     "--region-pixels", "0")
    assert result.exit_code == 1
    assert "cut.tif" in result.stderr
    store = tmp_path / "r.zarr"
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".") and p.is_dir()) == ["big"]
    assert not list((store / ".semtile" / "tmp").iterdir())  # the failed scan's staged result is gone


def test_block_memory_does_not_grow_with_the_scan():
    # A block's canvases and tiles depend on the tile and block size only, never on the scan's size.
    options = ProcessOptions()
    sizes = []
    for side in (5000, 20000, 100000):
        plan = RegionPlan.for_grid(TileGrid((side, side), options.tile, options.halo), region=2048,
                                   block_pixels=options.block_pixels)
        sizes.append(max((b.extent[1] - b.extent[0]) * (b.extent[3] - b.extent[2]) for b in plan.blocks))
    assert sizes[0] <= sizes[1] == sizes[2] <= (options.block_pixels + 2 * options.halo) ** 2

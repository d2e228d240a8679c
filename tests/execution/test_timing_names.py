"""The per-image timings say what they measure: ``wall_clock`` (read to write, overlapping other scans) beside the
stages whose sum is the image's work; stores that call it ``elapsed`` read the same."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from semtile.engines import EngineSettings, create_engine
from semtile.execution.local import ProcessOptions, process_scans
from semtile.inference.segment import SegmentPass
from semtile.io.discover import find_scans
from semtile.models.io import load_bundle
from semtile.results import open_results


def test_the_wall_clock_is_named_and_is_no_stage(tiny_bundle, tmp_path):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, (np.random.default_rng(0).random((100, 90)) * 255).astype(np.uint8))
    bundle = load_bundle(tiny_bundle)
    engine, _ = create_engine("torch-cpu", bundle, EngineSettings(tile=64, halo=8))
    options = ProcessOptions(tile=64, halo=8, batch_size=4)
    summary = process_scans(find_scans([path]), tmp_path / "r.zarr", options=options,
                            passes=[SegmentPass.of_engine(engine, bundle, options)], table=tmp_path / "r.csv")
    timings = summary.outcomes[0].timings
    assert "wall_clock" in timings and "elapsed" not in timings
    assert timings["wall_clock"] > 0
    results = open_results(tmp_path / "r.zarr")
    assert "wall_clock" not in results.summary()["stages"]
    assert results.table["seconds"].iloc[0] == pytest.approx(
        sum(v for k, v in results[results.names[0]].attrs["timings"].items() if k != "wall_clock"), abs=1e-3)

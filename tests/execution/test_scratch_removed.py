"""Scratch data gone mid-scan is an error, never zeros: a scan whose scratch folder is really removed while it is
processed fails with a clear error and leaves no result (and small scans need no scratch at all)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from semtile.engines.base import Engine, EngineOutput
from semtile.errors import ImageError
from semtile.execution.local import ProcessOptions, analyse_scan, process_scans
from semtile.inference.segment import SegmentPass
from semtile.models.io import load_bundle
from semtile.store import open_store


class ScratchRemovingEngine(Engine):
    """Returns its tiles as the mask; on its first batch removes everything under ``scratch`` (shutil.rmtree)."""

    name, precision = "null", "f32"

    def __init__(self, labels: int, scratch):
        self.labels, self.scratch, self.batches = labels, scratch, 0

    def run(self, tiles):
        self.batches += 1
        if self.batches == 1 and self.scratch is not None:
            for folder in self.scratch.rglob("*.zarr"):
                shutil.rmtree(folder, ignore_errors=True)
        return EngineOutput(class_logits=np.zeros((len(tiles), self.labels), np.float32), mask_probs=tiles.copy())


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, (np.random.default_rng(3).random((240, 260)) * 200 + 40).astype(np.uint8))
    (tmp_path / "scratch").mkdir()
    return path


OPTIONS = ProcessOptions(tile=64, halo=8, batch_size=4, databar_rows=0, region_pixels=0)


def test_a_region_scan_whose_scratch_is_removed_fails_and_stores_nothing(tiny_bundle, tmp_path, scan):
    bundle = load_bundle(tiny_bundle)
    engine = ScratchRemovingEngine(len(bundle.labels), tmp_path / "scratch")
    summary = process_scans([scan], tmp_path / "r.zarr", passes=[SegmentPass.of_engine(engine, bundle, OPTIONS)],
                            options=OPTIONS, table=tmp_path / "r.csv", scratch=tmp_path / "scratch")
    (outcome,) = summary.outcomes
    assert engine.batches >= 1
    assert outcome.status == "error" and "scratch" in outcome.error, outcome
    assert open_store(tmp_path / "r.zarr").find(scan) is None


def test_a_streamed_scan_whose_scratch_copy_is_removed_fails_loudly(tiny_bundle, tmp_path, scan):
    bundle = load_bundle(tiny_bundle)
    engine = ScratchRemovingEngine(len(bundle.labels), tmp_path / "scratch")
    with pytest.raises(ImageError, match="scratch copy .* missing data|scratch copy .* cannot be read"):
        analyse_scan(scan, [SegmentPass.of_engine(engine, bundle, OPTIONS)], OPTIONS, tmp_path / "scratch")


def test_a_small_scan_touches_no_scratch(tiny_bundle, tmp_path, scan):
    bundle = load_bundle(tiny_bundle)
    options = ProcessOptions(tile=64, halo=8, batch_size=4, databar_rows=0)
    seen = []

    class Watching(ScratchRemovingEngine):
        def run(self, tiles):
            seen.append(sorted(p.name for p in (tmp_path / "scratch").rglob("*")))
            return super().run(tiles)

    engine = Watching(len(bundle.labels), None)
    result, _ = analyse_scan(scan, [SegmentPass.of_engine(engine, bundle, options)], options, tmp_path / "scratch")
    assert seen and all(names == [] for names in seen)
    assert np.abs(np.asarray(result.image) - tifffile.imread(scan) / 255.0).max() < 1e-6

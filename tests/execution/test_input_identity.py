"""A result is of the bytes that were read, or there is none: an input replaced mid-run (a real atomic rename)
is that image's error, nothing is committed for it, and the next run processes the new file.

The replacement happens inside the run, after the scan was read and before its result is committed: the engine
(a null engine, its input tiles as the mask) renames a new file over the input on its first batch.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import tifffile

from semtile.engines.base import Engine, EngineOutput
from semtile.execution.local import ProcessOptions, process_scans
from semtile.inference.segment import SegmentPass
from semtile.models.io import load_bundle
from semtile.store import open_store


class ReplacingEngine(Engine):
    """Returns its tiles as the mask; on its first batch renames ``replacement`` over ``target`` (os.replace)."""

    name, precision = "null", "f32"

    def __init__(self, labels: int, target, replacement):
        self.labels, self.target, self.replacement, self.replaced = labels, target, replacement, False

    def run(self, tiles):
        if not self.replaced and self.replacement is not None:
            os.replace(self.replacement, self.target)  # atomic: the old inode stays whole for any open reader
            self.replaced = True
        return EngineOutput(class_logits=np.zeros((len(tiles), self.labels), np.float32), mask_probs=tiles.copy())


def _scan(path, seed):
    image = (np.random.default_rng(seed).random((180, 200)) * 255).astype(np.uint8)
    tifffile.imwrite(path, image)
    return image


def _run(bundle, options, path, replacement, out):
    engine = ReplacingEngine(len(bundle.labels), path, replacement)
    (out / "scratch").mkdir(exist_ok=True)
    return process_scans([path], out / "r.zarr", passes=[SegmentPass.of_engine(engine, bundle, options)],
                         options=options, table=out / "r.csv", scratch=out / "scratch")


@pytest.mark.parametrize("region_pixels", [None, 0], ids=["in-memory", "region-by-region"])
def test_an_input_replaced_mid_run_gets_no_result_and_the_rerun_does_it(tiny_bundle, tmp_path, region_pixels):
    bundle = load_bundle(tiny_bundle)
    options = ProcessOptions(tile=64, halo=8, batch_size=4, databar_rows=0,
                             **({} if region_pixels is None else {"region_pixels": region_pixels}))
    path = tmp_path / "scan.tif"
    old = _scan(path, 1)
    new = _scan(tmp_path / "new.tif.part", 2)
    summary = _run(bundle, options, path, tmp_path / "new.tif.part", tmp_path)
    assert not (old == new).all() and not (tmp_path / "new.tif.part").exists()  # the rename happened mid-run

    store = open_store(tmp_path / "r.zarr")
    name = store.find(path)
    if name is not None:  # whatever is stored must be of the file its record names (here: it must not be there)
        record, stored = store.record(name), store.read(name)
        content = new if record["input"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() else old
        assert np.abs(np.asarray(stored.image) - content / 255.0).max() <= 1 / 65535 + 1e-6, \
            "the stored image is not of the bytes its record names"
    assert name is None
    (outcome,) = summary.outcomes
    assert outcome.status == "error" and "changed while it was processed" in outcome.error

    # The next run processes the new file, and its record names the new bytes.
    again = _run(bundle, options, path, None, tmp_path)
    assert [o.status for o in again.outcomes] == ["ok"]
    name = store.find(path)
    record, stored = store.record(name), store.read(name)
    assert record["input"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.abs(np.asarray(stored.image) - new / 255.0).max() <= 1 / 65535 + 1e-6

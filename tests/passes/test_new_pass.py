"""A new kind of map runs in memory, region by region and on a real Dask LocalCluster with no change in execution.

The pass (:mod:`local_variance`) is defined beside this test, as a user would
define one; the runners, the mergers, the judge, the store and the run table
never name it. Its map is checked against a numpy oracle over the whole scan,
and the three runs against each other.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the workers of the cluster import the pass from here too

from local_variance import NAME, LocalVariancePass, local_variance

from semtile.engines import EngineSettings
from semtile.execution.batch import run_process
from semtile.inference.options import ProcessOptions
from semtile.inference.passes import PASSES
from semtile.inference.segment import segment_pass
from semtile.io.tiff import open_scan
from semtile.models.io import load_bundle
from semtile.results import open_results

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scans(tiny_dataset, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy-scans")
    for image in sorted((tiny_dataset / "images").glob("*.tif"))[:3]:
        shutil.copy(image, folder / image.name)
    return folder


def _run(scans: Path, out: Path, bundle: Path, cluster=None, **options):
    options = ProcessOptions(tile=64, halo=8, batch_size=8, **options)
    passes = [segment_pass(load_bundle(bundle), "torch-cpu", EngineSettings(tile=64, halo=8, threads=1), options),
              LocalVariancePass()]
    return run_process(sorted(scans.iterdir()), out, passes=passes, options=options, cluster=cluster)


def test_a_new_pass_runs_in_memory_region_by_region_and_on_a_cluster(scans, tiny_bundle, tmp_path):
    assert PASSES[NAME] is LocalVariancePass
    pytest.importorskip("distributed")
    from semtile.execution.distributed import ClusterSpec

    runs = {"memory": _run(scans, tmp_path / "memory.zarr", tiny_bundle),
            "regions": _run(scans, tmp_path / "regions.zarr", tiny_bundle, region_pixels=0, block_pixels=100),
            "cluster": _run(scans, tmp_path / "cluster.zarr", tiny_bundle, ClusterSpec(kind="local", workers=1),
                            region_pixels=0, block_pixels=100),
            "groups": _run(scans, tmp_path / "groups.zarr", tiny_bundle, ClusterSpec(kind="local", workers=1))}
    for label, summary in runs.items():
        assert summary.exit_code == 0, (label, [o.error for o in summary.failed])
    stores = {label: open_results(tmp_path / f"{label}.zarr") for label in runs}
    names = stores["memory"].names
    assert len(names) == 3 and all(stores[label].names == names for label in runs)
    for name in names:
        memory = stores["memory"][name]
        with open_scan(memory.source) as scan:
            image = np.asarray(scan.valid().compute(), dtype=np.float64)
        # Against the whole-scan oracle: equal but near tile borders, where a window's own edge (reflected
        # inside the tile) still has a little weight in the blend.
        oracle = local_variance(image[None])[0]
        got = memory.map(NAME).compute()
        assert got.shape == image.shape
        error = np.abs(got - oracle)
        assert np.median(error) < 1e-6 and error.max() < 0.15 * oracle.max()
        for label in ("regions", "cluster", "groups"):
            other = stores[label][name]
            assert ("regions" in other.attrs) == (label != "groups")  # on a cluster: region tasks, then group tasks
            assert np.abs(other.map(NAME).compute() - got).max() <= 1e-6, (label, name)
            assert other.attrs["rough_fraction"] == pytest.approx(memory.attrs["rough_fraction"], abs=1e-6)
            assert other.stored.maps[NAME].get("kind") == NAME  # the map's own attributes
    # The run table gains the pass's column; a rerun skips every scan (the pass's key is in the records).
    rows = list(csv.DictReader(open(runs["memory"].run_table)))
    assert [float(r["rough_fraction"]) for r in rows] == pytest.approx(
        [stores["memory"][n].attrs["rough_fraction"] for n in names], abs=1e-6)
    again = _run(scans, tmp_path / "memory.zarr", tiny_bundle)
    assert again.exit_code == 0 and len(again.skipped) == 3
    redo = run_process(sorted(scans.iterdir()), tmp_path / "memory.zarr", options=ProcessOptions(tile=64, halo=8),
                       passes=[segment_pass(load_bundle(tiny_bundle), "torch-cpu", EngineSettings(tile=64, halo=8),
                                            ProcessOptions(tile=64, halo=8)), LocalVariancePass(threshold=0.01)])
    assert len(redo.skipped) == 0 and redo.exit_code == 0  # another threshold: every scan redone

"""A small synthetic run for the report's tests: processed for real, with a failure, an expert and a map."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from click.testing import CliRunner

from semtile.cli.main import main

OPTIONS = ["--tile", "64", "--halo", "8", "--engine", "torch-cpu"]
HOSTILE = "<script>alert(1)</script> & friends"  # a failure reason the page must show as text


@dataclass
class Run:
    store: Path
    scans: Path
    labels: Path
    expert: Path
    images: int
    map_owner: str


def processed_run(folder: Path, dataset: Path, bundle: Path) -> Run:
    """``semtile process`` over the 8 images of ``dataset`` and one broken file; a heat map added by hand."""
    scans = folder / "scans"
    shutil.copytree(dataset / "images", scans)
    (scans / "broken.tif").write_text("not an image\n")
    store = folder / "results.zarr"
    run = CliRunner().invoke(main, ["--log-json", "process", str(scans), "--out", str(store), "--model", str(bundle),
                                    *OPTIONS])
    assert run.exit_code == 1, run.output  # one failure, the rest written
    labels = folder / "labels.csv"
    expert = folder / "expert.csv"
    with (dataset / "labels.csv").open(newline="") as handle:
        rows = [(Path(r["path"]).name, int(r["label"])) for r in csv.DictReader(handle)]
    for path, answers in ((labels, rows), (expert, [(name, min(3, label + i % 2)) for i, (name, label)
                                                     in enumerate(rows)])):
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label"])
            writer.writerows((f"scans/{name}", label) for name, label in answers)
    runs = sorted((folder / "results.runs").glob("*.csv"))
    with runs[-1].open("a", newline="") as handle:  # a failure with markup in its reason
        csv.writer(handle).writerow([str(scans / "hostile.tif"), "error", "", "", "", "", HOSTILE, "x"])
    owner = sorted(p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    group = zarr.open_group(str(store / owner), mode="a", zarr_format=3)
    rows_, cols = group["mask"].shape
    yy, xx = np.mgrid[0:rows_, 0:cols]
    group.create_array("heat", data=np.exp(-((yy - rows_ / 2) ** 2 + (xx - cols / 2) ** 2) / 800.0).astype(np.float32))
    return Run(store=store, scans=scans, labels=labels, expert=expert, images=8, map_owner=owner)

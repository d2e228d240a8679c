"""Particles, scratches and pits on the copper surfaces: exact masks, counts, determinism."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from semtile.synth import SynthConfig, databar_height, write_dataset
from semtile.synth.defects import DEFECT_CODES, draw_defects
from semtile.synth.surfaces import synth_surface, synth_surface_with


def test_every_changed_pixel_is_in_the_mask_and_each_kind_looks_like_itself():
    field = np.full((200, 260), 0.5)
    labels, counts = draw_defects(np.random.default_rng(0), field, count=30)
    changed = field != 0.5
    assert sum(counts.values()) == 30 and all(counts.values())
    assert not (changed & (labels == 0)).any()  # nothing drawn outside the mask
    assert changed[labels > 0].mean() > 0.95  # and the mask is what was drawn
    if (labels == DEFECT_CODES["particle"]).any():
        assert field[labels == DEFECT_CODES["particle"]].mean() > 0.6  # bright domes
    assert field[labels == DEFECT_CODES["pit"]].min() < 0.25  # dark holes


def test_dataset_writes_defect_masks_and_counts(tmp_path):
    write_dataset(tmp_path, SynthConfig(per_label=1, labels=2, size=(240, 320), seed=2, defects=True))
    with (tmp_path / "defects.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == ["images/t00_0000.tif", "images/t01_0000.tif"]
    bar = databar_height(240)
    for row in rows:
        mask = tifffile.imread(tmp_path / "defect_masks" / row["path"].split("/")[-1])
        assert mask.shape == (240, 320) and set(np.unique(mask)) <= {0, 1, 2, 3}
        assert not mask[240 - bar:].any()  # nothing in the data bar
        assert float(row["defect_fraction"]) == pytest.approx((mask[: 240 - bar] > 0).mean(), abs=1e-6)
        assert int(row["particles"]) + int(row["scratches"]) + int(row["pits"]) > 0


def test_defects_are_deterministic_and_leave_plain_surfaces_alone(tmp_path):
    cfg = SynthConfig(per_label=1, labels=2, size=(128, 160), seed=9, defects=True)
    write_dataset(tmp_path / "a", cfg)
    write_dataset(tmp_path / "b", cfg)
    name = "t00_0000.tif"
    for folder in ("images", "defect_masks"):
        assert (tmp_path / "a" / folder / name).read_bytes() == (tmp_path / "b" / folder / name).read_bytes()
    # Without an overlay the frame is exactly the plain generator's.
    plain = synth_surface(np.random.default_rng(1), (128, 160), 0.4)
    same = synth_surface_with(np.random.default_rng(1), (128, 160), 0.4, None)
    assert all(np.array_equal(x, y) for x, y in zip(plain, same[:3])) and same[3] is None
    assert not (tmp_path / "plain").exists()
    write_dataset(tmp_path / "plain", SynthConfig(per_label=1, labels=2, size=(128, 160), seed=9))
    assert not (tmp_path / "plain" / "defect_masks").exists() and not (tmp_path / "plain" / "defects.csv").exists()

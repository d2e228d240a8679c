"""Lattice patches with point defects: exact truth, the chosen defect share, determinism, the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.errors import SemtileError
from semtile.synth.lattice import DEFECT_KINDS, LatticeConfig, synth_lattice, write_lattice_dataset


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_dataset_has_the_chosen_share_of_defects_and_masks_only_on_them(tmp_path):
    rows = write_lattice_dataset(tmp_path, LatticeConfig(count=150, defect_fraction=0.02, seed=1))
    assert sum(r["label"] for r in rows) == 3  # round(0.02 * 150)
    labels, truth = _rows(tmp_path / "labels.csv"), _rows(tmp_path / "truth.csv")
    assert list(labels[0]) == ["path", "label"] and len(labels) == len(truth) == 150
    assert list(truth[0])[:4] == ["path", "label", "kind", "variant"]
    for row in truth:
        image = tifffile.imread(tmp_path / row["path"])
        mask = tifffile.imread(tmp_path / "masks" / row["path"].split("/")[-1])
        assert image.shape == mask.shape == (48, 48) and image.dtype == np.uint8
        assert int(row["defect_pixels"]) == int(mask.sum())
        if row["label"] == "1":
            assert row["kind"] in DEFECT_KINDS and mask.any()
            ys, xs = np.nonzero(mask)
            # the defect sits near the middle, where the patch shows its neighbourhood
            assert abs(ys.mean() - 24) < 14 and abs(xs.mean() - 24) < 14
        else:
            assert row["kind"] == "" and not mask.any()


def test_same_seed_same_bytes_other_seed_other_patches(tmp_path):
    config = LatticeConfig(count=20, defect_fraction=0.2, seed=4)
    write_lattice_dataset(tmp_path / "a", config)
    write_lattice_dataset(tmp_path / "b", config)
    write_lattice_dataset(tmp_path / "c", LatticeConfig(count=20, defect_fraction=0.2, seed=5))
    name = "images/p000007.tif"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    assert (tmp_path / "a" / "labels.csv").read_text() == (tmp_path / "b" / "labels.csv").read_text()


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_kind_changes_the_lattice_where_its_mask_says(kind):
    brighter, darker = 0, 0
    for seed in range(6):
        image, mask, variants = synth_lattice(np.random.default_rng(seed), (48, 48), [(kind, (24.0, 24.0))])
        assert mask.any() and len(variants) == 1
        inside = image[mask > 0].mean()
        atoms = np.quantile(image, 0.8)  # the level of the atoms' peaks
        brighter += inside > image.mean()
        darker += inside < atoms
    if kind == "adatom":  # an extra atom in the middle of a (dark) ring
        assert brighter >= 5
    if kind == "vacancy":  # atoms missing where atoms should be
        assert darker == 6


def test_bad_configuration_is_refused_with_a_reason():
    with pytest.raises(SemtileError, match="defect fraction"):
        LatticeConfig(defect_fraction=1.5)
    with pytest.raises(SemtileError, match="kinds"):
        LatticeConfig(kinds=("crack",))


def test_cli_lattice_and_both_spellings_of_copper(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["synth", "lattice", str(tmp_path / "L"), "--count", "30", "--defect-fraction", "0.1",
                                  "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "3 with a defect" in result.output
    assert sum(int(r["label"]) for r in _rows(tmp_path / "L" / "labels.csv")) == 3
    # The README's spelling (no subcommand) and the explicit one write the same copper surfaces.
    args = ["--per-label", "1", "--labels", "2", "--size", "96x128", "--seed", "3"]
    plain = runner.invoke(main, ["synth", str(tmp_path / "A"), *args])
    named = runner.invoke(main, ["synth", "copper", str(tmp_path / "B"), *args])
    assert plain.exit_code == 0 and named.exit_code == 0, plain.output + named.output
    for name in ("t00_0000.tif", "t01_0000.tif"):
        assert (tmp_path / "A" / "images" / name).read_bytes() == (tmp_path / "B" / "images" / name).read_bytes()
    bad = runner.invoke(main, ["synth", "lattice", str(tmp_path / "X"), "--kinds", "crack"])
    assert bad.exit_code == 2 and "kinds" in bad.output

"""``semtile verify``, ``--repair`` and the rerun; ``evaluate --masks`` and ``report`` over damaged results.

Real runs of the ``semtile`` command (in-process through click) on real
TIFFs with a real (tiny) model into a real store, damaged on disk: a bit
flipped in place with its modification time put back (bit rot) and a
chunk file cut short.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "results"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from damage import flip, truncate

from sample_results import write_results

OPTIONS = ["--tile", "64", "--halo", "8", "--batch-size", "4", "--engine", "torch-cpu"]


def run_cli(*args):
    return CliRunner().invoke(main, ["--log-json", *map(str, args)], catch_exceptions=False)


def snapshot(out: Path) -> dict:
    """Every result by source name: mask and binary mask as stored, label, ratio."""
    store = open_store(out, mode="r")
    results = [store.read(n) for n in store.names()]
    return {r.source.name: (np.asarray(r.mask[...]), np.asarray(r.binary_mask[...]), r.label, r.adhesive_ratio)
            for r in results}


@pytest.mark.slow
def test_verify_names_the_damage_and_repair_makes_the_rerun_redo_it(tmp_path, tiny_dataset, tiny_bundle):
    scans = tmp_path / "scans"
    shutil.copytree(tiny_dataset / "images", scans)
    out = tmp_path / "r.zarr"
    assert run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS).exit_code == 0
    clean = snapshot(out)
    whole = run_cli("verify", out)
    assert whole.exit_code == 0 and "verify: 8 results checked" in whole.output and "8 whole, 0 damaged" in whole.output

    rotten, cut = sorted(open_store(out, mode="r").names())[1:3]
    flip(out / rotten / "mask" / "c" / "0" / "0")
    truncate(out / cut / "0" / "c" / "0" / "0")
    found = run_cli("verify", out)
    assert found.exit_code == 1
    assert f"{rotten}: damaged: array 'mask' chunk c/0/0: checksum" in found.output
    assert f"{cut}: damaged: array '0' chunk c/0/0:" in found.output and "6 whole, 2 damaged" in found.output

    # A plain rerun redoes the cut chunk (its size is checked); bit rot keeps size and time: verify finds it.
    again = run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS)
    assert again.exit_code == 0 and "1 done, 7 skipped" in again.stderr
    assert "result_damaged" in again.stderr
    repaired = run_cli("verify", out, "--repair")
    assert repaired.exit_code == 1 and f"{rotten}: set aside as .semtile/damaged/{rotten}~" in repaired.output
    assert rotten not in open_store(out, mode="r").names()
    kept = list((out / ".semtile" / "damaged").glob(f"{rotten}~*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["damage"][0]["chunk"] == "c/0/0"
    redo = run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS)
    assert redo.exit_code == 0 and "1 done, 7 skipped" in redo.stderr
    assert run_cli("verify", out).exit_code == 0

    after = snapshot(out)
    assert sorted(after) == sorted(clean)
    for name, (mask, binary, label, ratio) in clean.items():
        np.testing.assert_allclose(after[name][0], mask, atol=1e-6)
        assert (after[name][1] == binary).all() and after[name][2:] == (label, ratio)


@pytest.fixture()
def paired_store(tmp_path) -> tuple[Path, Path]:
    store = write_results(tmp_path, n=6, shape=(300, 600), failures=False)
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(6):
        truth = np.zeros((300, 600), np.uint8)
        truth[: 60 * (i + 1)] = 1
        tifffile.imwrite(masks / f"scan_{i}.tif", truth)
    return store, masks


def test_evaluate_masks_over_a_truncated_chunk_scores_the_rest_and_names_it(paired_store, tmp_path):
    store, masks = paired_store
    for name in ("scan_0", "scan_3"):
        truncate(store / name / "mask" / "c" / "0" / "0")
    out = tmp_path / "eval"
    result = run_cli("evaluate", store, "--masks", masks, "--out", out)
    assert result.exit_code == 1  # like process: some results failed, the rest were scored
    report = json.loads((out / "explanations.json").read_text())
    assert sorted(report["damaged"]) == ["scan_0", "scan_3"]
    assert "scan_0: damaged result: array 'mask' chunk c/0/0" in report["damaged"]["scan_0"]
    assert {p.name for p in out.iterdir()} >= {"explanations.md", "explanations.csv", "explanations.json"}
    assert "2 damaged results left out" in (out / "explanations.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval")]  # no half-written folder left


def test_report_shows_a_damaged_result_as_its_error(paired_store, tmp_path):
    store, _ = paired_store
    flip(store / "scan_2" / "0" / "c" / "0" / "0")  # the level the report draws these small scans from
    result = run_cli("report", store, "--out", tmp_path / "report")
    assert result.exit_code == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "scan_2: damaged result: array " in page and "chunk c/0/0: checksum" in page
    assert page.count("damaged result") == 1

"""``semtile.open_results``: the run table as a DataFrame, lazy arrays, maps, run tables, model curve, answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr

import semtile
from semtile.errors import SemtileError
from semtile.results import open_results
from semtile.results.reader import TABLE_COLUMNS

from sample_results import CLASSIFIER_SHA, SEGMENTER_SHA, add_heat_map, write_labels_csv, write_results


def test_the_table_has_one_row_per_result_with_its_facts(tmp_path):
    store = write_results(tmp_path, n=6)
    results = semtile.open_results(store)  # the top-level export
    table = results.table
    assert isinstance(table, pd.DataFrame) and len(table) == len(results) == 6
    assert list(table.index) == results.names == [f"scan_{i}" for i in range(6)]
    assert list(table.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    row = table.loc["scan_1"]
    assert row["source"] == str((tmp_path / "scans" / "scan_1.tif").resolve()) and row["file"] == "scan_1.tif"
    assert row["status"] == "ok" and row["label"] == 1 and row["pixel_size_m"] == pytest.approx(2e-9)
    assert (row["height"], row["width"], row["databar_rows"]) == (300, 400, 10)
    assert row["engine"] == "torch-cpu" and row["precision"] == "f32" and row["run_id"] == "run-b"
    assert row["segmenter_sha256"] == SEGMENTER_SHA and row["classifier_sha256"] == CLASSIFIER_SHA
    # seconds: the work of this image, not the wall time it spent waiting beside others (the old "elapsed"
    # of these sample results is read as "wall_clock")
    assert row["t_read"] == pytest.approx(0.02) and row["t_wall_clock"] == 9.0 and "t_elapsed" not in table
    assert row["seconds"] == pytest.approx(0.02 + 0.1 + 0.02)
    assert table["adhesive_ratio"].dtype == float and table["height"].dtype == "Int64"
    np.testing.assert_allclose(table["adhesive_ratio"], [1 - (i % 4) / 3 * 0.9 for i in range(6)], atol=0.01)


def test_arrays_are_lazy_dask_arrays_of_the_stored_result(tmp_path):
    store = write_results(tmp_path, n=2, failures=False)
    image = open_results(store)["scan_1"]
    arrays = image.arrays()
    assert set(arrays) == {"mask", "binary_mask", "class_probs", "image"}
    assert all(isinstance(a, da.Array) for a in arrays.values())
    binary = image.binary_mask
    assert binary.shape == (300, 400) and binary.dtype == bool
    mask = image.mask.compute()
    np.testing.assert_array_equal(binary.compute(), mask >= 0.5)
    assert float(binary.mean().compute()) == pytest.approx(image.adhesive_ratio)
    assert image.image.dtype == np.float32 and 0.29 <= float(image.image.min().compute())
    assert image.levels == ["0"] and image.level(0).shape == (300, 400)  # too small for a pyramid
    assert image.mask_level(0).dtype == bool
    with pytest.raises(SemtileError, match="no image level 1"):
        image.level(1)


def test_previews_read_a_coarse_level_not_full_resolution(tmp_path, monkeypatch):
    store = write_results(tmp_path, n=1, shape=(1100, 1300), failures=False)
    image = open_results(store)["scan_0"]
    assert image.levels == ["0", "1", "2"]  # 1100x1300, 550x650, 275x325
    opened = []
    real = zarr.Group.__getitem__
    monkeypatch.setattr(zarr.Group, "__getitem__", lambda self, key: opened.append(key) or real(self, key))
    preview = image.preview(256)
    assert preview.level == 2 and preview.gray.shape == preview.binary.shape == (275, 325)
    assert opened == ["2", "labels/adhesive/2"]
    assert image.preview(600).level == 1 and image.preview(5000).level == 0


def test_extra_maps_are_listed_and_read_whatever_they_are_called(tmp_path):
    store = write_results(tmp_path, n=3, failures=False)
    heat = add_heat_map(store, "scan_1")
    group = zarr.open_group(str(store / "scan_1"), mode="a", zarr_format=3)
    group.create_array("anomaly_levels/0", data=np.ones((300, 400), np.float32))  # a map with a pyramid
    group.create_array("anomaly_levels/1", data=np.ones((150, 200), np.float32))
    group.create_array("scores", data=np.ones(4, np.float32))  # 1-D: not a map
    clusters = group["labels"].create_group("clusters")
    clusters.create_array("0", data=np.arange(300 * 400, dtype=np.uint8).reshape(300, 400) % 3)
    results = open_results(store)
    image = results["scan_1"]
    assert list(image.maps) == ["anomaly_levels", "heat", "labels/clusters"]
    assert image.maps["labels/clusters"].label_image and image.maps["anomaly_levels"].paths == (
        "anomaly_levels/0", "anomaly_levels/1")
    np.testing.assert_array_equal(image.map("heat").compute(), heat)
    assert image.map("anomaly_levels", 1).shape == (150, 200)
    assert set(image.arrays()) >= {"heat", "anomaly_levels", "labels/clusters", "mask"}
    assert results.table.loc["scan_1", "maps"] == "anomaly_levels, heat, labels/clusters"
    assert results.table.loc["scan_0", "maps"] == "" and results["scan_0"].maps == {}
    assert results.summary()["maps"] == ["anomaly_levels", "heat", "labels/clusters"]
    with pytest.raises(SemtileError, match="no map 'nope'"):
        image.map("nope")


def test_run_tables_give_counts_and_the_failures_that_remain(tmp_path):
    store = write_results(tmp_path, n=3)
    results = open_results(store)
    assert results.runs.run_ids == ["run-a", "run-b"] and results.runs.latest_id == "run-b"
    assert results.runs.counts() == {"ok": 4, "error": 1, "skipped": 1}
    assert results.runs.counts("run-a") == {"ok": 0, "error": 2, "skipped": 0}
    failures = results.failures  # fixed.tif failed in run-a but was done in run-b
    assert [Path(p).name for p in failures["path"]] == ["broken.tif"]
    assert failures.iloc[0]["error"] == "broken.tif: not a TIFF file" and failures.iloc[0]["run"] == "run-b"
    summary = results.summary()
    assert summary["results"] == 3 and summary["failures"] == 1 and summary["runs"] == 2
    assert summary["latest_counts"] == {"ok": 4, "error": 1, "skipped": 1}
    assert summary["engines"] == [{"engine": "torch-cpu", "precision": "f32", "images": 3}]
    assert summary["models"][0]["segmenter_sha256"] == SEGMENTER_SHA
    assert summary["seconds_per_image"] == pytest.approx(np.mean([0.12 + 0.01 * (i + 1) for i in range(3)]))
    assert set(summary["stages"]) == {"read", "infer", "stitch"} and summary["wall_clock_per_image"] == 9.0


def test_results_without_timings_or_run_tables_still_open(tmp_path):
    store = write_results(tmp_path, n=2, timings=False, failures=False)
    results = open_results(store)
    assert results.table["seconds"].isna().all() and not any(c.startswith("t_") for c in results.table.columns)
    assert results.runs.run_ids == [] and results.failures.empty
    summary = results.summary()
    assert summary["seconds_per_image"] is None and summary["latest_counts"] is None and summary["stages"] == {}


def test_an_empty_store_gives_an_empty_table(tmp_path):
    from semtile.store import open_store

    open_store(tmp_path / "empty.zarr")
    results = open_results(tmp_path / "empty.zarr")
    assert len(results) == 0 and results.table.empty and list(results.table.columns) == list(TABLE_COLUMNS)
    assert results.summary()["results"] == 0 and results.hypothesis_curve() is None and results.labels == []


def test_the_older_store_format_reads_through_the_same_api(tmp_path):
    store = write_results(tmp_path, n=2, legacy=True, failures=False)
    results = open_results(store)
    assert len(results.table) == 2 and results.table.loc["scan_1", "label"] == 1
    image = results["scan_1"]
    assert set(image.arrays()) == {"mask", "binary_mask", "class_probs"}  # this format keeps no image
    assert image.levels == [] and image.maps == {}
    preview = image.preview(100)  # the probability mask, read with a stride
    assert preview.gray.shape == (75, 100) and preview.binary.any()


def test_the_hypothesis_curve_comes_from_provenance_or_the_card(tmp_path):
    g = [1.0, 0.7, 0.4, 0.1]
    assert open_results(write_results(tmp_path / "a", n=1, g=g, failures=False)).hypothesis_curve() == {
        "labels": [0, 1, 2, 3], "g": g, "hypothesis": "linear", "source": "provenance"}
    plain = open_results(write_results(tmp_path / "b", n=1, failures=False))
    assert plain.hypothesis_curve() is None  # a segmenter trained on masks has none
    # The card beside the weights, when the provenance lacks the curve and the card's sha256 matches.
    store = write_results(tmp_path / "c", n=1, failures=False)
    weights = tmp_path / "model" / "segmenter.pt"
    weights.parent.mkdir()
    prov_path = store / "scan_0" / "provenance.json"  # the full provenance, beside zarr.json
    prov = json.loads(prov_path.read_text())
    prov["model"]["segmenter"]["path"] = str(weights)
    prov_path.write_text(json.dumps(prov))
    card = {"sha256": SEGMENTER_SHA, "training": {"hypothesis": "sqrt", "g": [1.0, 0.5, 0.3, 0.0]}}
    weights.with_suffix(".json").write_text(json.dumps(card))
    curve = open_results(store).hypothesis_curve()
    assert curve["hypothesis"] == "sqrt" and curve["source"].endswith("segmenter.json")
    card["sha256"] = "0" * 64  # another model now at that path: not this result's curve
    weights.with_suffix(".json").write_text(json.dumps(card))
    assert open_results(store).hypothesis_curve() is None


def test_answers_match_by_path_then_by_unique_file_name(tmp_path):
    store = write_results(tmp_path, n=4, failures=False)
    labels = write_labels_csv(tmp_path / "labels.csv", [
        ("scans/scan_0.tif", 0), ("scans/scan_1.tif", 1),
        ("moved/scan_2.tif", 3),  # the images moved after processing: matched by name
        ("scans/unknown.tif", 2)])
    answers = open_results(store).answers(labels)
    assert answers.to_dict() == {"scan_0": 0, "scan_1": 1, "scan_2": 3, "scan_3": None}
    assert answers.attrs["matched"] == 3 and answers.attrs["by_name"] == 1 and answers.attrs["unmatched_answers"] == 1
    with pytest.raises(SemtileError, match="not found"):
        open_results(store).answers(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,answer\nx,1\n")
    with pytest.raises(SemtileError, match=re.escape(str(bad))):
        open_results(store).answers(bad)


def test_what_is_no_store_is_refused_by_name_and_left_alone(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.zarr").write_text("x")
    for target in (tmp_path / "absent.zarr", tmp_path / "empty", tmp_path / "file.zarr"):
        with pytest.raises(SemtileError, match=re.escape(str(target))):
            open_results(target)
    assert not (tmp_path / "absent.zarr").exists() and not any((tmp_path / "empty").iterdir())
    with pytest.raises(SemtileError, match="a path to a result store"):
        open_results(42)
    store = write_results(tmp_path / "s", n=1, failures=False)
    with pytest.raises(SemtileError, match="no result named 'nope'"):
        open_results(store)["nope"]
    bad_run = store.parent / "r.runs"
    bad_run.mkdir()
    (bad_run / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SemtileError, match="not a run table"):
        _ = open_results(store).runs  # the property reads the tables

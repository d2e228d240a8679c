"""What the report says is true of every result: each parameter set with its count, the built-in model's
caveat, and true labels the model does not know said in words instead of empty scores."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from semtile.report import build_report
from semtile.results import open_results
from semtile.store import open_store

sys.path.insert(0, str(Path(__file__).parents[1] / "results"))
from sample_results import sample_result, write_labels_csv

BUILTIN_MODEL = {"source": "builtin", "classifier": {"path": "/pkg/classifier.pt", "sha256": "c1" * 32, "builtin": True},
                 "segmenter": {"path": "/pkg/segmenter.pt", "sha256": "5e" * 32, "builtin": True}}


def _store(folder: Path, thresholds: list[float], model: dict | None = None) -> Path:
    """Results of ``scan_K.tif`` made at ``thresholds[K]`` (and with ``model`` where given)."""
    scans = folder / "scans"
    scans.mkdir(parents=True)
    path = folder / "r.zarr"
    store = open_store(path)
    for i, threshold in enumerate(thresholds):
        source = scans / f"scan_{i}.tif"
        source.write_bytes(b"")
        result = sample_result(source, i, shape=(120, 160))
        result.attrs["provenance"]["parameters"] = {"tile": 64, "halo": 8, "threshold": threshold}
        if model is not None:
            result.attrs["provenance"]["model"] = model
        store.write(store.claim(source), result)
    return path


def _data(index: Path) -> dict:
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', index.read_text(), re.S)
    return json.loads(found.group(1))


def test_every_parameter_set_is_shown_with_its_count_and_each_row_has_its_own(tmp_path):
    store = _store(tmp_path, [0.3, 0.3, 0.7, 0.3, 0.7])
    sets = open_results(store).parameter_sets()
    assert [(s["parameters"]["threshold"], s["images"]) for s in sets] == [(0.3, 3), (0.7, 2)]
    outcome = build_report(store, tmp_path / "report")
    text = outcome.index.read_text()
    block = re.search(r'id="parameter-sets">(.*?)</td>', text, re.S).group(1)
    assert "2 different sets" in block
    assert "threshold 0.3, tile 64, halo 8 · torch-cpu f32 · model test-model (3 images)" in block
    assert "threshold 0.7, tile 64, halo 8 · torch-cpu f32 · model test-model (2 images)" in block
    data = _data(outcome.index)
    assert {c["key"] for c in data["columns"]} >= {"params"}
    by_name = {row["file"]: row["params"] for row in data["rows"]}
    assert by_name["scan_2.tif"].startswith("threshold 0.7") and by_name["scan_0.tif"].startswith("threshold 0.3")
    marker = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [s["images"] for s in marker["parameter_sets"]] == [3, 2]


def test_one_parameter_set_needs_no_column(tmp_path):
    outcome = build_report(_store(tmp_path, [0.5, 0.5]), tmp_path / "report")
    assert "different sets" not in outcome.index.read_text()
    assert "params" not in {c["key"] for c in _data(outcome.index)["columns"]}
    assert "builtin-model" not in outcome.index.read_text()  # no banner for another model


def test_the_builtin_model_is_named_in_a_banner_and_by_open_results(tmp_path):
    store = _store(tmp_path, [0.5, 0.5], model=BUILTIN_MODEL)
    results = open_results(store)
    assert results.builtin_model and results[results.names[0]].builtin_parts == ["segmenter", "classifier"]
    text = build_report(store, tmp_path / "report").index.read_text()
    banner = re.search(r'<aside class="banner" id="builtin-model"[^>]*>(.*?)</aside>', text, re.S).group(1)
    assert "synthetic copper etching conditions 0-15" in banner and "semtile train classifier" in banner
    assert "(the paper&#39;s Figure 10)" not in text and "synthetic copper etching condition, see the note" in text
    assert json.loads((tmp_path / "report" / "report.json").read_text())["builtin_model"] == ["segmenter",
                                                                                              "classifier"]


def test_true_labels_the_model_does_not_know_are_said_and_not_scored(tmp_path):
    store = _store(tmp_path, [0.5] * 4, model=BUILTIN_MODEL)
    labels = write_labels_csv(tmp_path / "labels.csv", [(f"scans/scan_{i}.tif", name) for i, name in
                                                        enumerate(["ATII", "ATII", "Macrophage", "ATI"])])
    outcome = build_report(store, tmp_path / "report", labels_csv=labels)
    text = outcome.index.read_text()
    said = re.search(r'id="labels-unknown">(.*?)</p>', text, re.S).group(1)
    assert "None of the true labels is a label of the model" in said
    assert "ATII, Macrophage, ATI" in said and "the model's 0-3" in said
    for figure in ("fig-confusion-model", "fig-accuracy"):
        assert figure not in text
    assert "top-1" not in text
    crosstab = re.search(r'id="labels-crosstab">(.*?)</table>', text, re.S).group(1)
    assert "<td>ATII</td><td>2</td>" in crosstab
    assert _data(outcome.index)["labels"] is True  # the true label still in every row


def test_known_true_labels_are_still_scored(tmp_path):
    store = _store(tmp_path, [0.5] * 4)
    labels = write_labels_csv(tmp_path / "labels.csv", [(f"scans/scan_{i}.tif", i % 4) for i in range(4)])
    text = build_report(store, tmp_path / "report", labels_csv=labels).index.read_text()
    assert "labels-unknown" not in text and "fig-confusion-model" in text and "fig-accuracy" in text


def test_old_records_without_the_part_flag_still_read(tmp_path):
    old = {"source": "builtin", "classifier": {"path": "classifier.pt", "sha256": "c1" * 32},
           "segmenter": {"path": "/x/segmenter.pt", "sha256": "5e" * 32}}
    results = open_results(_store(tmp_path, [0.5], model=old))
    assert results[results.names[0]].builtin_parts == ["segmenter", "classifier"]


def test_no_single_g_is_drawn_for_results_of_several_segmenters(tmp_path):
    other = {"source": "other", "classifier": {"path": "/o/classifier.pt", "sha256": "c1" * 32},
             "segmenter": {"path": "/o/segmenter.pt", "sha256": "77" * 32,
                           "training": {"mode": "weak", "hypothesis": "linear", "g": [1.0, 0.6, 0.3, 0.0]}}}
    store = _store(tmp_path / "a", [0.5, 0.5], model=other)
    assert "linear (source: provenance)" in build_report(store, tmp_path / "ra").index.read_text()
    extra = open_store(store)
    source = tmp_path / "a" / "scans" / "scan_9.tif"
    source.write_bytes(b"")
    extra.write(extra.claim(source), sample_result(source, 9, shape=(120, 160)))  # the sample segmenter
    text = build_report(store, tmp_path / "rb").index.read_text()
    assert "linear (source: provenance)" not in text and "made by 2 different models" in text


def test_true_labels_of_other_columns_are_named_with_options(tmp_path):
    """A labels CSV as public sets write them (``image,class``), named with --path-column and --label-column."""
    from click.testing import CliRunner

    from semtile.cli.main import main

    store = _store(tmp_path, [0.5] * 4)
    labels = tmp_path / "other.csv"
    labels.write_text("image,class\n" + "".join(f"scans/scan_{i}.tif,{i % 4}\n" for i in range(4)))
    refused = CliRunner().invoke(main, ["report", str(store), "--out", str(tmp_path / "a"), "--labels", str(labels)])
    assert refused.exit_code == 2 and "image, class" in refused.output  # the columns it found
    done = CliRunner().invoke(main, ["report", str(store), "--out", str(tmp_path / "b"), "--labels", str(labels),
                                     "--path-column", "image", "--label-column", "class"])
    assert done.exit_code == 0, done.output
    assert "fig-confusion-model" in (tmp_path / "b" / "index.html").read_text()

"""``semtile report``: the page and the pictures it writes, read as files (the browser test opens them)."""

from __future__ import annotations

import html
import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from semtile.cli.main import main
from semtile.errors import SemtileError
from semtile.report import build_report
from semtile.results import open_results
from semtile.store import ImageResult, ZarrDirectoryStore

from report_run import HOSTILE, processed_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dataset, tiny_bundle):
    return processed_run(tmp_path_factory.mktemp("report-run"), tiny_dataset, tiny_bundle)


def page_data(index) -> dict:
    text = index.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    return json.loads(found.group(1))


def test_the_report_of_a_run_holds_its_summary_figures_and_every_image(run, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(run.store), "--out", str(out), "--labels", str(run.labels),
                                       "--expert", str(run.expert)])
    assert result.exit_code == 0, result.output
    assert "8 images, 2 failing inputs" in result.output
    text = (out / "index.html").read_text(encoding="utf-8")
    results = open_results(run.store)
    # The summary: counts, engine, model sha256s, the failures with their reasons (as text, never markup).
    assert "broken.tif" in text and html.escape(HOSTILE) in text and HOSTILE not in text
    assert "torch-cpu" in text
    assert results.table["segmenter_sha256"].iloc[0] in text and results.table["classifier_sha256"].iloc[0] in text
    # Figures inline: distribution, ratio against label with g(t) (the tiny model's card has one), confusion
    # matrices of model and expert, accuracy per label.
    for figure in ("fig-ratio-distribution", "fig-ratio-label", "fig-confusion-model", "fig-confusion-expert",
                   "fig-accuracy"):
        assert re.search(rf'id="{figure}"[^>]*src="data:image/png;base64,', text), figure
    assert "linear (source: provenance)" in text  # the curve g(t) the figure draws, named
    # The table: one row per image, each with a thumbnail and a larger view on disk.
    data = page_data(out / "index.html")
    assert len(data["rows"]) == run.images == len(results)
    assert {row["name"] for row in data["rows"]} == set(results.names)
    for row in data["rows"]:
        for key in ("thumb", "view", "mask"):
            assert (out / row[key]).is_file()
        assert max(Image.open(out / row["thumb"]).size) <= 128
        assert row["truth"] is not None and row["expert"] is not None
    heat = next(row for row in data["rows"] if row["name"] == run.map_owner)
    assert list(heat["layers"]) == ["heat"] and (out / heat["layers"]["heat"]).is_file()
    assert 'id="maps"' in text and "heat" in text
    marker = json.loads((out / "report.json").read_text())
    assert marker["format"] == "semtile-report/1" and marker["images"] == 8 and marker["failures"] == 2
    assert [w["name"] for w in marker["labels"]["who"]] == ["model", "expert", "model on the expert's images"]


def test_the_page_needs_nothing_from_the_network(run, tmp_path):
    build_report(run.store, tmp_path / "report")
    text = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', text)  # no CDN, no remote picture
    assert "<link rel=\"stylesheet\"" not in text and "@import" not in text
    assert "<style>" in text and "function apply()" in text  # style and script inlined
    files = {p.relative_to(tmp_path / "report").parts[0] for p in (tmp_path / "report").rglob("*") if p.is_file()}
    assert files == {"index.html", "report.json", "thumbs", "views", "maps"}


def test_a_report_replaces_its_older_self_and_nothing_else(run, tmp_path):
    out = tmp_path / "report"
    build_report(run.store, out)
    (out / "thumbs" / "stale.jpg").write_bytes(b"x")
    build_report(run.store, out, title="second")
    assert "second" in (out / "index.html").read_text() and not (out / "thumbs" / "stale.jpg").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary left beside it
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    with pytest.raises(SemtileError, match="not a semtile report"):
        build_report(run.store, other)
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]
    with pytest.raises(SemtileError, match="inside the result store"):
        build_report(run.store, run.store / "report")
    assert not (run.store / "report").exists()


def test_bad_arguments_are_refused_by_name(run, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["report", str(tmp_path / "absent.zarr"), "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "absent.zarr" in missing.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(main, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert empty.exit_code == 2 and "empty" in empty.output
    expert_alone = runner.invoke(main, ["report", str(run.store), "--out", str(tmp_path / "r"),
                                        "--expert", str(run.expert)])
    assert expert_alone.exit_code == 2 and "--expert needs --labels" in expert_alone.output
    unrelated = tmp_path / "other.csv"
    unrelated.write_text("path,label\nelsewhere/x.tif,1\n")
    nothing = runner.invoke(main, ["report", str(run.store), "--out", str(tmp_path / "r"), "--labels", str(unrelated)])
    assert nothing.exit_code == 2 and "other.csv" in nothing.output and "no image of it" in nothing.output
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.*"))


def test_a_store_without_run_tables_or_timings_still_reports(run, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(run.store, store)  # no run tables beside the copy
    outcome = build_report(store, tmp_path / "report")
    assert outcome.images == 8 and outcome.failures == 0
    text = (tmp_path / "report" / "index.html").read_text()
    assert "none found beside the store" in text and "No input is failing." in text


def test_the_older_store_format_reports_from_its_masks(tmp_path):
    store = ZarrDirectoryStore(tmp_path / "old.zarr")
    for i in range(3):
        source = tmp_path / f"s{i}.tif"
        mask = np.zeros((90, 120), np.float32)
        mask[: 30 * (i + 1)] = 1.0
        store.write(store.claim(source), ImageResult(
            source=source, mask=mask, binary_mask=mask >= 0.5, class_probs=np.array([0.5, 0.5], np.float32),
            labels=[0, 1], label=i % 2, adhesive_ratio=float((mask >= 0.5).mean())))
    outcome = build_report(tmp_path / "old.zarr", tmp_path / "report")
    assert outcome.images == 3 and outcome.picture_errors == 0
    rows = page_data(tmp_path / "report" / "index.html")["rows"]
    assert [row["name"] for row in rows] == ["s0", "s1", "s2"] and all(row["px"] is None for row in rows)
    assert Image.open(tmp_path / "report" / rows[0]["thumb"]).size == (120, 90)


@pytest.mark.slow
def test_worker_processes_draw_the_same_pictures_as_one(run, tmp_path, monkeypatch):
    from semtile.report import pictures

    results = open_results(run.store)
    alone = pictures.render_pictures(results, tmp_path / "one", workers=1)
    monkeypatch.setattr(pictures, "MIN_SHARE", 2)  # 8 images: shared among worker processes
    shared = pictures.render_pictures(results, tmp_path / "two", workers=2)
    assert shared == alone and list(shared) == results.names
    for drawn in shared.values():
        assert drawn.error is None
        for file in (drawn.thumb, drawn.view, drawn.mask, *drawn.maps.values(), *drawn.map_thumbs.values()):
            assert (tmp_path / "two" / file).read_bytes() == (tmp_path / "one" / file).read_bytes(), file

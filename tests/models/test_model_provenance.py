"""Every model part is named truthfully and recorded by absolute path: --classifier alone, a folder with one
network, the built-in model's caveat, and explain finding the recorded classifier from another folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.errors import ModelError
from semtile.models.io import builtin_bundle_dir, load_bundle
from semtile.results import open_results

PROCESS = ["--engine", "torch-cpu", "--tile", "64", "--threads", "1"]


def _run(*args):
    return CliRunner().invoke(main, ["--log-json", *map(str, args)], catch_exceptions=False)


def _events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.fixture
def two_scans(tiny_dataset, tmp_path) -> Path:
    scans = tmp_path / "scans"
    scans.mkdir()
    for path in sorted((tiny_dataset / "images").iterdir())[:2]:
        shutil.copy(path, scans / path.name)
    return scans


def test_a_classifier_given_alone_is_named_and_recorded_by_absolute_path(tiny_bundle, tmp_path, monkeypatch):
    shutil.copy(tiny_bundle / "classifier.pt", tmp_path / "clf.pt")
    shutil.copy(tiny_bundle / "classifier.json", tmp_path / "clf.json")
    monkeypatch.chdir(tmp_path)
    bundle = load_bundle(None, classifier="clf.pt")
    clf = (tmp_path / "clf.pt").absolute()
    assert bundle.source == f"builtin segmenter + classifier {clf}"
    assert bundle.builtin == ("segmenter",)
    prov = bundle.provenance()
    assert prov["classifier"]["path"] == str(clf) and prov["classifier"]["builtin"] is False
    assert prov["segmenter"]["builtin"] is True and Path(prov["segmenter"]["path"]).is_absolute()
    assert load_bundle().source == "builtin" and load_bundle().builtin == ("segmenter", "classifier")
    # The built-in file given by path is still the built-in one.
    assert load_bundle(None, classifier=builtin_bundle_dir() / "classifier.pt").source == "builtin"


def test_a_folder_with_one_network_takes_the_other_from_the_builtin_model(tiny_bundle, tmp_path):
    only = tmp_path / "m"
    only.mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(tiny_bundle / f"classifier{suffix}", only / f"classifier{suffix}")
    bundle = load_bundle(only)
    assert bundle.source == f"builtin segmenter + classifier {only / 'classifier.pt'}"
    assert bundle.builtin == ("segmenter",) and bundle.labels == [0, 1, 2, 3]
    assert load_bundle(tiny_bundle).source == str(tiny_bundle) and load_bundle(tiny_bundle).builtin == ()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="neither classifier.pt nor segmenter.pt.*--classifier / --segmenter"):
        load_bundle(empty)


def test_process_with_a_classifier_folder_says_what_it_used(tiny_bundle, two_scans, tmp_path):
    only = tmp_path / "m"
    only.mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(tiny_bundle / f"classifier{suffix}", only / f"classifier{suffix}")
    store = tmp_path / "r.zarr"
    done = _run("process", two_scans, "--out", store, "--model", only, *PROCESS)
    assert done.exit_code == 0, done.output
    events = _events(done.stderr)
    named = f"builtin segmenter + classifier {only / 'classifier.pt'}"
    filled = [e for e in events if e.get("event") == "model_part_builtin"]
    assert filled and filled[0]["part"] == "segmenter" and "--segmenter" in filled[0]["note"]
    start = next(e for e in events if e.get("event") == "run_start")
    assert start["model"] == named
    caveat = [e for e in events if e.get("event") == "model_caveat"]
    assert len(caveat) == 1 and caveat[0]["level"] == "warning" and "segmenter" in caveat[0]["note"]
    assert "built-in segmenter: masks learnt on synthetic etched copper only" in done.stderr.splitlines()[-1]
    results = open_results(store)
    assert set(results.table["model_source"]) == {named}
    assert results.builtin_model and results[results.names[0]].builtin_parts == ["segmenter"]


def test_explain_finds_the_recorded_classifier_from_another_folder(tiny_bundle, two_scans, tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(tiny_bundle / f"classifier{suffix}", work / f"clf{suffix}")
    store = tmp_path / "r.zarr"
    monkeypatch.chdir(work)
    done = _run("process", two_scans, "--out", store, "--classifier", "clf.pt", *PROCESS)
    assert done.exit_code == 0, done.output
    start = next(e for e in _events(done.stderr) if e.get("event") == "run_start")
    assert start["model"] == f"builtin segmenter + classifier {work / 'clf.pt'}"
    results = open_results(store)
    first = results[results.names[0]]
    assert first.provenance["model"]["classifier"]["path"] == str(work / "clf.pt")
    assert first.builtin_parts == ["segmenter"]  # the labels are the tiny classifier's, not the built-in scale
    monkeypatch.chdir(elsewhere)
    done = _run("explain", store, "--kinds", "cam", "--threads", "1")
    assert done.exit_code == 0, done.output
    assert "explained 2, skipped 0, failed 0" in done.output
    os.replace(work / "clf.pt", work / "gone.pt")
    done = _run("explain", store, "--kinds", "gradcam", "--threads", "1")
    assert done.exit_code != 0
    assert f"{work / 'clf.pt'}" in done.output and "give it with --model" in done.output


def test_the_builtin_model_is_said_once_in_the_log_and_in_the_summary(two_scans, tmp_path):
    store = tmp_path / "r.zarr"
    done = _run("process", two_scans, "--out", store, *PROCESS)
    assert done.exit_code == 0, done.output
    caveats = [e for e in _events(done.stderr) if e.get("event") == "model_caveat"]
    assert len(caveats) == 1 and caveats[0]["level"] == "warning"
    assert "synthetic copper etching conditions 0-15" in caveats[0]["note"]
    assert "semtile train classifier" in caveats[0]["note"]
    last = done.stderr.splitlines()[-1]
    assert last.startswith("2 done") and "built-in model: labels are synthetic copper etching conditions 0-15" in last
    assert open_results(store).builtin_model
    again = _run("process", two_scans, "--out", store, *PROCESS)  # nothing runs: nothing to say
    assert not [e for e in _events(again.stderr) if e.get("event") == "model_caveat"]
    assert "built-in" not in again.stderr.splitlines()[-1]

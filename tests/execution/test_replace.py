"""Reruns with other settings: what a run replaces it says; --keep-existing keeps; a live run's result is kept.

Real ``semtile process`` runs (CliRunner, or two real processes) on real TIFFs into a real store.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.store import open_store

OPTIONS = ["--tile", "64", "--halo", "8", "--batch-size", "3", "--engine", "torch-cpu"]


def run_cli(*args):
    return CliRunner().invoke(main, ["--log-json", *map(str, args)], catch_exceptions=False)


def events(stderr: str, name: str) -> list[dict]:
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


def last_run_table(tmp_path: Path) -> list[dict]:
    with sorted((tmp_path / "r.runs").glob("*.csv"))[-1].open(newline="") as handle:
        return list(csv.DictReader(handle))


def thresholds(out: Path) -> dict[str, float]:
    store = open_store(out, mode="r")
    return {Path(store.read(n).source).name: store.record(n)["parameters"]["threshold"] for n in store.names()}


@pytest.fixture()
def two_scans(tmp_path, tiny_dataset) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in sorted((tiny_dataset / "images").glob("*.tif"))[:2]:
        shutil.copy(path, folder / path.name)
    return folder


def test_a_rerun_with_another_threshold_says_what_it_replaces(two_scans, tiny_bundle, tmp_path):
    out = tmp_path / "r.zarr"
    first = run_cli("process", two_scans, "--out", out, "--model", tiny_bundle, *OPTIONS, "--threshold", "0.5")
    assert first.exit_code == 0, first.stderr
    assert "made with" not in first.stderr and not events(first.stderr, "results_replaced")
    assert {r["replaced"] for r in last_run_table(tmp_path)} == {""}

    again = run_cli("process", two_scans, "--out", out, "--model", tiny_bundle, *OPTIONS, "--threshold", "0.3")
    assert again.exit_code == 0, again.stderr
    # The summary
    assert "replaced 2 results made with threshold 0.5 (now 0.3)" in again.stderr
    assert "2 done, 0 skipped" in again.stderr
    # The log: one WARNING for the group, with the count and the difference field by field
    [warning] = events(again.stderr, "results_replaced")
    assert warning["level"] == "warning" and warning["count"] == 2
    assert warning["difference"] == "threshold 0.5 (now 0.3)"
    assert warning["changes"] == {"threshold": {"stored": "0.5", "now": "0.3"}}
    assert warning["message"] == "replacing 2 results made with threshold 0.5 (now 0.3)"
    # The run table
    rows = last_run_table(tmp_path)
    assert [(r["status"], r["replaced"]) for r in rows] == [("ok", "threshold 0.5 (now 0.3)")] * 2
    assert set(thresholds(out).values()) == {0.3}

    # Two fields at once, grouped: tile and threshold
    third = run_cli("process", two_scans, "--out", out, "--model", tiny_bundle, *OPTIONS[:-6], "--tile", "32",
                    *OPTIONS[2:], "--threshold", "0.4")
    assert third.exit_code == 0, third.stderr
    assert "replaced 2 results made with tile 64 (now 32), threshold 0.3 (now 0.4)" in third.stderr
    # Unchanged: skipped, nothing replaced
    same = run_cli("process", two_scans, "--out", out, "--model", tiny_bundle, *OPTIONS[:-6], "--tile", "32",
                   *OPTIONS[2:], "--threshold", "0.4")
    assert "0 done, 2 skipped" in same.stderr and "made with" not in same.stderr


def test_keep_existing_skips_every_stored_result_whatever_it_was_made_with(two_scans, tiny_bundle, tmp_path):
    out = tmp_path / "r.zarr"
    assert run_cli("process", two_scans, "--out", out, "--model", tiny_bundle, *OPTIONS,
                   "--threshold", "0.3").exit_code == 0
    extra = tmp_path / "more"
    shutil.copytree(two_scans, extra)
    next(extra.glob("*.tif")).rename(extra / "new.tif")
    kept = run_cli("process", two_scans, extra / "new.tif", "--out", out, "--model", tiny_bundle, *OPTIONS,
                   "--keep-existing", "--threshold", "0.7")
    assert kept.exit_code == 0, kept.stderr
    assert "1 done, 0 skipped (already complete), 2 kept (--keep-existing), 0 failed" in kept.stderr
    assert "kept 2 results made with threshold 0.3 (this run: 0.7) (--keep-existing)" in kept.stderr
    assert not events(kept.stderr, "results_replaced")
    assert thresholds(out) == {**{p.name: 0.3 for p in two_scans.glob("*.tif")}, "new.tif": 0.7}
    rows = {Path(r["path"]).name: r["status"] for r in last_run_table(tmp_path)}
    assert rows == {**{p.name: "skipped" for p in two_scans.glob("*.tif")}, "new.tif": "ok"}


def test_force_and_keep_existing_together_are_refused(two_scans, tiny_bundle, tmp_path):
    out = tmp_path / "r.zarr"
    refused = run_cli("process", two_scans, "--out", out, "--model", tiny_bundle, *OPTIONS, "--force",
                      "--keep-existing")
    assert refused.exit_code == 2 and "--keep-existing" in refused.stderr and "--force" in refused.stderr
    assert not out.exists()


def spawn(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "semtile.cli.main", "--log-json", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_run_never_replaces_what_a_live_run_made_otherwise(tiny_dataset, tiny_bundle, tmp_path):
    """Run A (0.5) over 16 scans, slowly; run B (0.3) starts once A wrote 2, over A's first 2 and 2 of its own.

    B leaves A's 2 results alone (A is live): failed, naming A's run; it writes its own 2. A ends with all
    16 of its results at 0.5. (A finished run's results are replaced with a message: the first test.)
    """
    scans, own = tmp_path / "scans", tmp_path / "own"
    scans.mkdir()
    own.mkdir()
    images = sorted((tiny_dataset / "images").glob("*.tif"))
    for i in range(16):
        shutil.copy(images[i % len(images)], scans / f"s{i:02d}.tif")
    for i in range(2):
        shutil.copy(images[i], own / f"x{i}.tif")
    out = tmp_path / "r.zarr"
    a = spawn("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS[:-3], "1", "--engine", "torch-cpu",
              "--threshold", "0.5")
    deadline = time.time() + 180
    while time.time() < deadline and a.poll() is None:
        if (out / "zarr.json").is_file() and len(open_store(out, mode="r").names()) >= 2:
            break
        time.sleep(0.05)
    assert a.poll() is None, "run A ended before run B could start"
    early = sorted(thresholds(out))
    b = spawn("process", *(scans / n for n in early[:2]), own / "x0.tif", own / "x1.tif", "--out", out,
              "--model", tiny_bundle, *OPTIONS, "--threshold", "0.3")
    _, b_err = b.communicate(timeout=300)
    _, a_err = a.communicate(timeout=300)
    [a_start], [b_start] = events(a_err, "run_start"), events(b_err, "run_start")
    assert b.returncode == 1, b_err  # the two it left alone are its failures
    for name in early[:2]:
        assert f"FAILED {scans / name}: not replaced: the stored result was made by run {a_start['run_id']}, " \
               "still running, with threshold 0.5 (this run: 0.3)" in b_err
    assert a.returncode == 0, a_err
    assert not events(a_err, "results_replaced")
    final = thresholds(out)
    assert sorted(final) == sorted([f"s{i:02d}.tif" for i in range(16)] + ["x0.tif", "x1.tif"])
    assert {final[f"s{i:02d}.tif"] for i in range(16)} == {0.5} and final["x0.tif"] == final["x1.tif"] == 0.3
    b_rows = {}
    for table in (tmp_path / "r.runs").glob("*.csv"):
        with table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and rows[0]["run_id"] == b_start["run_id"]:
            b_rows = {Path(r["path"]).name: r["status"] for r in rows}
    assert b_rows == {early[0]: "error", early[1]: "error", "x0.tif": "ok", "x1.tif": "ok"}


def test_the_difference_is_named_field_by_field():
    from semtile.execution.resume import describe_difference

    key = {"format": "f", "model_sha256": {"classifier": "a" * 64, "segmenter": "b" * 64},
           "engine": {"name": "torch-cpu", "precision": "bf16"}, "parameters": {"tile": 256, "threshold": 0.3},
           "anomaly": {"threshold": 0.1}}
    record = {"format": "f", "model_sha256": {"classifier": "c" * 64, "segmenter": "b" * 64},
              "engine": {"name": "torch-cpu", "precision": "f32"}, "parameters": {"tile": 128, "threshold": 0.3}}
    assert describe_difference(record, key) == ("classifier sha256 cccccccccccc (now aaaaaaaaaaaa), precision f32 "
                                                 "(now bf16), tile 128 (now 256), no anomaly (now anomaly)")
    assert describe_difference({**record, "anomaly": {"threshold": 0.2}}, key, now="this run:").endswith(
        "anomaly threshold 0.2 (this run: 0.1)")


def test_a_run_is_live_while_its_process_runs_and_only_that_process():
    import os
    import socket
    from datetime import UTC, datetime

    from semtile.store.table import new_run_id, run_alive, running

    def run_id(pid: int, when: float, host: str = socket.gethostname()) -> str:
        return f"{datetime.fromtimestamp(when, UTC).strftime('%Y%m%dT%H%M%S.%fZ')}-{host}-{pid}-abcdef"

    mine = new_run_id()
    assert run_alive(mine) is False  # this process, but not running it
    with running(mine):
        assert run_alive(mine) is True
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        assert run_alive(run_id(other.pid, time.time())) is True
        assert run_alive(run_id(other.pid, time.time() - 3600)) is False  # the pid is reused: a later process
        assert run_alive(run_id(other.pid, time.time(), host="elsewhere")) is None
    finally:
        other.kill()
        other.wait()
    assert run_alive(run_id(other.pid, time.time())) is False
    assert os.getpid() != other.pid and run_alive("not-a-run-id") is None

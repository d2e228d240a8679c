"""Nightly reruns: skip what is done, redo what changed, survive kill -9, SIGTERM and concurrent runs.

These run the real ``semtile`` command (CliRunner in-process, or a real
subprocess where a process must be killed) on real TIFFs into a real store.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.store import open_store

OPTIONS = ["--tile", "64", "--halo", "8", "--batch-size", "3", "--engine", "torch-cpu"]


def run_cli(*args):
    return CliRunner().invoke(main, ["--log-json", *map(str, args)], catch_exceptions=False)


def spawn(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "semtile.cli.main", "--log-json", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def table(path: Path) -> dict[str, dict]:
    with path.open(newline="") as handle:
        return {Path(row["path"]).name: row for row in csv.DictReader(handle)}


def snapshot(out: Path) -> dict:
    """Every completed result: (source name) -> mask, label, ratio."""
    store = open_store(out, mode="r")
    results = [store.read(n) for n in store.names()]
    return {r.source.name: (np.asarray(r.mask[...]), r.label, r.adhesive_ratio) for r in results}


def assert_same_results(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        # at the stored precision (uint8 p * 255): batches of another size may round one count apart
        np.testing.assert_allclose(a[name][0], b[name][0], atol=1 / 255 + 1e-6)
        assert a[name][1:] == b[name][1:]


def no_leftovers(out: Path) -> None:
    import zarr

    root = zarr.open_group(str(out), mode="r")
    assert all(not k.startswith(".") for k in root.group_keys())
    assert sorted(root.group_keys()) == sorted(open_store(out, mode="r").names())


@pytest.fixture()
def scans(tmp_path, tiny_dataset) -> Path:
    folder = tmp_path / "scans"
    shutil.copytree(tiny_dataset / "images", folder)
    return folder


def test_rerun_skips_what_is_done_and_redoes_what_changed(scans, tiny_bundle, tmp_path):
    out = tmp_path / "r.zarr"
    first = run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS)
    assert first.exit_code == 0, first.stderr
    images = sorted(scans.glob("*.tif"))
    assert "8 done, 0 skipped" in first.stderr
    before = snapshot(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    again = run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS)
    assert again.exit_code == 0 and "0 done, 8 skipped" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p in mtimes} == mtimes
    rows = table(tmp_path / "r.csv")
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows.values())
    runs = sorted((tmp_path / "r.runs").glob("*.csv"))
    assert len(runs) == 2 and {r["status"] for r in table(runs[1]).values()} == {"skipped"}

    # Touched without change: still skipped (the content decides). Changed: only it is redone.
    os.utime(images[0], ns=(time.time_ns(), time.time_ns()))
    shutil.copy(images[2], images[1])
    changed = run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS)
    assert changed.exit_code == 0 and "1 done, 7 skipped" in changed.stderr
    after = snapshot(out)
    np.testing.assert_allclose(after[images[1].name][0], before[images[2].name][0], atol=1e-6)

    # A parameter that changes the output redoes all; --force redoes all.
    assert "8 done, 0 skipped" in run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS,
                                          "--threshold", "0.4").stderr
    assert "8 done, 0 skipped" in run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS,
                                          "--threshold", "0.4", "--force").stderr
    # The batch size does not change a result: skipped.
    assert "0 done, 8 skipped" in run_cli("process", scans, "--out", out, "--model", tiny_bundle,
                                          *OPTIONS[:-4], "--batch-size", "5", "--engine", "torch-cpu",
                                          "--threshold", "0.4").stderr
    no_leftovers(out)


def _wait_for_results(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        # The root's zarr.json marks a store the writer has finished creating (the folder comes first).
        if (out / "zarr.json").is_file() and len(open_store(out, mode="r").names()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not write {count} results in time (exit {proc.poll()})")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_killed_run_resumes_to_a_clean_runs_store(how, scans, tiny_bundle, tmp_path):
    clean = tmp_path / "clean.zarr"
    assert run_cli("process", scans, "--out", clean, "--model", tiny_bundle, *OPTIONS).exit_code == 0

    out, scratch = tmp_path / "r.zarr", tmp_path / "scratch"
    # Batch size 1: many small steps, so the signal lands mid-run.
    # A short lease: the killed run's scratch and temporaries are another run's to remove 3 s after it died.
    proc = spawn("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS[:-3], "1", "--engine",
                 "torch-cpu", "--scratch", scratch, env={**os.environ, "SEMTILE_LEASE_SECONDS": "3"})
    _wait_for_results(out, 2, proc)
    proc.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if how == "SIGTERM":
        assert proc.returncode == 3, stderr
        assert "interrupted by SIGTERM" in stderr
        assert not list(scratch.glob("semtile-*")), "scratch left behind"
    else:
        assert proc.returncode == -signal.SIGKILL
        assert list(scratch.glob("semtile-run~*")), "a killed run leaves its scratch"
        time.sleep(3.5)  # its lease expires
    done = len(open_store(out, mode="r").names())
    assert 2 <= done <= 8

    rerun = run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS, "--scratch", scratch)
    assert rerun.exit_code == 0, rerun.stderr
    assert f"{8 - done} done, {done} skipped" in rerun.stderr
    assert not list(scratch.glob("semtile-*"))  # a dead run's scratch is removed on start (its lease expired)
    assert_same_results(snapshot(out), snapshot(clean))
    no_leftovers(out)


@pytest.mark.slow
def test_two_concurrent_runs_lose_nothing(tiny_dataset, tiny_bundle, tmp_path):
    images = sorted((tiny_dataset / "images").glob("*.tif"))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for i, path in enumerate(images):
        shutil.copy(path, a / f"scan{i % 4}.tif" if i < 4 else b / f"scan{i % 4}.tif")  # same names, other scans
    shutil.copy(images[5], a / "shared.tif")
    out = tmp_path / "r.zarr"
    # Run 1 gets a/ and b/, run 2 gets b/ and a/shared.tif: overlapping inputs, same-named files.
    procs = [spawn("process", a, b, "--out", out, "--model", tiny_bundle, *OPTIONS),
             spawn("process", b, a / "shared.tif", "--out", out, "--model", tiny_bundle, *OPTIONS)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    store = open_store(out, mode="r")
    sources = sorted(str(store.read(n).source) for n in store.names())
    inputs = sorted(str(p.resolve()) for p in [*a.glob("*.tif"), *b.glob("*.tif")])
    assert sources == inputs  # every input exactly one complete result
    with (tmp_path / "r.csv").open(newline="") as handle:
        current = list(csv.DictReader(handle))
    assert sorted(r["path"] for r in current) == inputs and {r["status"] for r in current} == {"ok"}
    for name in store.names():
        result = store.read(name)
        row = next(r for r in current if r["path"] == str(result.source))
        assert float(row["adhesive_ratio"]) == pytest.approx(result.adhesive_ratio, abs=1e-6)
    no_leftovers(out)


def test_setup_errors_come_before_any_work(scans, tiny_bundle, tmp_path):
    array = tmp_path / "array.zarr"
    import zarr

    zarr.create_array(str(array), shape=(4,), dtype="f4")
    result = run_cli("process", scans, "--out", array, "--model", tiny_bundle, *OPTIONS)
    assert result.exit_code == 2 and "array.zarr" in result.stderr and "Traceback" not in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("process", scans, "--out", tmp_path / "r.zarr", "--csv", blocker / "r.csv",
                     "--model", tiny_bundle, *OPTIONS)
    assert result.exit_code == 2 and "cannot write here" in result.stderr
    result = run_cli("process", scans, "--out", tmp_path / "s.zarr", "--scratch", blocker / "scratch",
                     "--model", tiny_bundle, *OPTIONS)
    assert result.exit_code == 2 and "cannot write here" in result.stderr


def test_a_full_disk_at_the_table_keeps_the_results(scans, tiny_bundle, tmp_path, monkeypatch):
    import errno

    import semtile.execution.batch as batch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch, "write_current_table", full)
    out = tmp_path / "r.zarr"
    result = run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS)
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr and len(open_store(out, mode="r").names()) == 8
    monkeypatch.undo()  # space again: the rerun skips everything and writes the table
    again = run_cli("process", scans, "--out", out, "--model", tiny_bundle, *OPTIONS)
    assert again.exit_code == 0 and "0 done, 8 skipped" in again.stderr
    assert len(table(tmp_path / "r.csv")) == 8

"""Fencing on a real cluster: a scheduler and a worker started by hand, the driver SIGTERMed or the scheduler
killed while a worker is about to write. The worker must not commit once its driver has gone (the driver's
scratch may be gone too), and a lost scheduler is one error for the run (exit 3), not one per input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import semtile
from semtile.engines import EngineSettings
from semtile.execution.batch import run_process
from semtile.inference.options import ProcessOptions
from semtile.inference.segment import segment_pass
from semtile.models.io import load_bundle

from scan_compare import assert_clean_or_absent

pytest.importorskip("distributed")

SETTINGS = EngineSettings(tile=64, halo=8, batch_size=4)
OPTIONS = ProcessOptions(tile=64, halo=8, batch_size=4)
HOOK = Path(__file__).with_name("hold_hook")


def _env(**extra) -> dict:
    code = str(Path(semtile.__file__).resolve().parents[1])  # the tree under test
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HOOK), code]), **extra}


def _wait(predicate, what: str, timeout: float = 90, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None and not predicate():
            raise AssertionError(f"{what}: the process ended first ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{what}: not in {timeout} s")


@pytest.fixture()
def scans(tmp_path, tiny_dataset) -> list[Path]:
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in sorted((tiny_dataset / "images").glob("*.tif"))[:4]:
        shutil.copy(path, folder / path.name)
    return sorted(folder.glob("*.tif"))


@pytest.mark.slow
def test_a_worker_whose_driver_has_gone_commits_nothing(tmp_path, scans, tiny_bundle):
    reference = tmp_path / "clean.zarr"
    assert run_process(scans, reference, passes=[segment_pass(load_bundle(tiny_bundle), "torch-cpu", SETTINGS,
                                                              OPTIONS)], options=OPTIONS).exit_code == 0
    hold = tmp_path / "hold"
    hold.mkdir()
    file = tmp_path / "scheduler.json"
    py = sys.executable
    scheduler = subprocess.Popen([py, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--scheduler-file", str(file), "--dashboard-address", ":0"], env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [scheduler]
    try:
        _wait(file.exists, "the scheduler file")
        procs.append(subprocess.Popen([py, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(file),
                                       "--host", "127.0.0.1", "--nthreads", "1", "--memory-limit", "0",
                                       "--death-timeout", "20"],
                                      env=_env(SEMTILE_TEST_HOLD=str(hold), SEMTILE_TEST_HOLD_IN="write"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def drive(out: Path, scratch: Path) -> subprocess.Popen:
            return subprocess.Popen([py, "-m", "semtile.cli.main", "--log-json", "process", *map(str, scans),
                                     "--out", str(out), "--model", str(tiny_bundle), "--engine", "torch-cpu",
                                     "--tile", "64", "--halo", "8", "--batch-size", "4", "--scratch", str(scratch),
                                     "--scheduler-file", str(file)],
                                    env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def held() -> list[Path]:
            return list(hold.glob("held-*"))

        # 1. The driver gets SIGTERM while the worker is about to write its first result.
        out, scratch = tmp_path / "term.zarr", tmp_path / "scratch-term"
        (hold / "arm").write_text("")
        driver = drive(out, scratch)
        _wait(lambda: held(), "the worker holding its first write", proc=driver)
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=60)
        assert driver.returncode == 3, stderr[-3000:]
        assert not list(scratch.glob("semtile-*")), "the driver's scratch is removed once its lease is released"
        (hold / "go").write_text("")
        _wait(lambda: list(hold.glob("after-*")), "the held write to end")
        outcome = min(hold.glob("after-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])).read_text()
        assert outcome.startswith("LeaseLost"), outcome  # the worker could not commit
        time.sleep(1.0)  # the rest of that task (its other scans) ends too: none may commit
        assert assert_clean_or_absent(out, reference) == []

        # 2. The scheduler is killed while the worker holds a write: one error, exit 3; no commit after.
        for marker in hold.iterdir():
            marker.unlink()
        out, scratch = tmp_path / "lost.zarr", tmp_path / "scratch-lost"
        (hold / "arm").write_text("")
        driver = drive(out, scratch)
        _wait(lambda: held(), "the worker holding a write", proc=driver)
        scheduler.kill()
        _, stderr = driver.communicate(timeout=90)
        assert driver.returncode == 3, stderr[-3000:]
        events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        assert [e["event"] for e in events].count("scheduler_lost") == 1
        assert not [e for e in events if e["event"] in ("image_failed", "task_failed")], "no input failed for it"
        assert "lost the Dask scheduler" in stderr.splitlines()[-1]
        assert not list(scratch.glob("semtile-*"))
        (hold / "go").write_text("")
        _wait(lambda: list(hold.glob("after-*")), "the held write to end")
        first = min(hold.glob("after-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
        assert first.read_text().startswith("LeaseLost"), first.read_text()
        time.sleep(1.0)
        assert assert_clean_or_absent(out, reference) == []
    finally:
        for proc in reversed(procs):
            proc.kill()
        for proc in procs:
            proc.wait(timeout=30)

"""Fencing on a real cluster: a scheduler and a worker started by hand, the driver SIGTERMed or the scheduler
killed while a worker is about to write. The worker must not commit once its driver has gone (the driver's
scratch may be gone too), and a lost scheduler is one error for the run (exit 3), not one per input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_env import hooked_env

from semtile.engines import EngineSettings
from semtile.execution.batch import run_process
from semtile.inference.options import ProcessOptions
from semtile.inference.segment import segment_pass
from semtile.models.io import load_bundle

from scan_compare import assert_clean_or_absent

pytest.importorskip("distributed")

SETTINGS = EngineSettings(tile=64, halo=8, batch_size=4)
OPTIONS = ProcessOptions(tile=64, halo=8, batch_size=4)



def _wait(predicate, what: str, timeout: float = 90, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None and not predicate():
            raise AssertionError(f"{what}: the process ended first ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{what}: not in {timeout} s")



class _Cluster:
    """A scheduler and one worker started by hand (the worker's writes can be held, see hold_hook), and the
    clean in-process run of the same scans to compare with."""

    def __init__(self, tmp_path: Path, scans: list[Path], bundle: Path):
        self.tmp, self.scans, self.bundle = tmp_path, scans, bundle
        self.reference = tmp_path / "clean.zarr"
        assert run_process(scans, self.reference, passes=[segment_pass(load_bundle(bundle), "torch-cpu", SETTINGS,
                                                                       OPTIONS)], options=OPTIONS).exit_code == 0
        self.hold = tmp_path / "hold"
        self.hold.mkdir()
        self.file = tmp_path / "scheduler.json"
        py = sys.executable
        self.scheduler = subprocess.Popen([py, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                           "--port", "0", "--scheduler-file", str(self.file),
                                           "--dashboard-address", ":0"], env=hooked_env(),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs = [self.scheduler]
        _wait(self.file.exists, "the scheduler file")
        self.procs.append(subprocess.Popen([py, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                            str(self.file), "--host", "127.0.0.1", "--nthreads", "1",
                                            "--memory-limit", "0", "--death-timeout", "20"],
                                           env=hooked_env(SEMTILE_TEST_HOLD=str(self.hold), SEMTILE_TEST_HOLD_IN="write"),
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def drive(self, out: Path, scratch: Path) -> subprocess.Popen:
        """``semtile process`` on the scheduler, its first write held by the worker until :meth:`release`."""
        (self.hold / "arm").write_text("")
        return subprocess.Popen([sys.executable, "-m", "semtile.cli.main", "--log-json", "process",
                                 *map(str, self.scans), "--out", str(out), "--model", str(self.bundle), "--engine",
                                 "torch-cpu", "--tile", "64", "--halo", "8", "--batch-size", "4", "--scratch",
                                 str(scratch), "--scheduler-file", str(self.file)],
                                env=hooked_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def held(self) -> list[Path]:
        return list(self.hold.glob("held-*"))

    def release(self) -> str:
        """Lets the held write go on; what its store call gave (``ok`` or the exception)."""
        (self.hold / "go").write_text("")
        _wait(lambda: list(self.hold.glob("after-*")), "the held write to end")
        return min(self.hold.glob("after-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])).read_text()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.kill()
        for proc in self.procs:
            proc.wait(timeout=30)


@pytest.fixture()
def cluster(tmp_path, scans, tiny_bundle):
    made = _Cluster(tmp_path, scans, tiny_bundle)
    try:
        yield made
    finally:
        made.close()


@pytest.mark.slow
def test_a_worker_whose_driver_has_gone_commits_nothing(cluster, tmp_path):
    """The driver gets SIGTERM while the worker is about to write its first result."""
    out, scratch = tmp_path / "term.zarr", tmp_path / "scratch-term"
    driver = cluster.drive(out, scratch)
    _wait(cluster.held, "the worker holding its first write", proc=driver)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 3, stderr[-3000:]
    assert not list(scratch.glob("semtile-*")), "the driver's scratch is removed once its lease is released"
    outcome = cluster.release()
    assert outcome.startswith("LeaseLost"), outcome  # the worker could not commit
    time.sleep(1.0)  # the rest of that task (its other scans) ends too: none may commit
    assert assert_clean_or_absent(out, cluster.reference) == []


@pytest.mark.slow
def test_a_lost_scheduler_is_one_error_and_nothing_commits_after(cluster, tmp_path):
    """The scheduler is killed while the worker holds a write: one error for the run (exit 3), no input
    failed for it, and the worker commits nothing afterwards."""
    out, scratch = tmp_path / "lost.zarr", tmp_path / "scratch-lost"
    driver = cluster.drive(out, scratch)
    _wait(cluster.held, "the worker holding a write", proc=driver)
    cluster.scheduler.kill()
    _, stderr = driver.communicate(timeout=90)
    assert driver.returncode == 3, stderr[-3000:]
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events].count("scheduler_lost") == 1
    assert not [e for e in events if e["event"] in ("image_failed", "task_failed")], "no input failed for it"
    assert "lost the Dask scheduler" in stderr.splitlines()[-1]
    assert not list(scratch.glob("semtile-*"))
    outcome = cluster.release()
    assert outcome.startswith("LeaseLost"), outcome
    time.sleep(1.0)
    assert assert_clean_or_absent(out, cluster.reference) == []

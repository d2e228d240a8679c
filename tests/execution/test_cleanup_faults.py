"""Clean-up never touches what is alive or not semtile's: a live writer seen from another PID namespace (a
second node, a container with the same host name), a hostile symlink in a shared store, a file system
without hard links; and a full disk is a clear stop, at store creation and mid-run."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fault_env import hooked_env

from semtile.cli.main import main
from semtile.engines import EngineSettings
from semtile.execution.batch import run_process
from semtile.inference.options import ProcessOptions
from semtile.inference.segment import segment_pass
from semtile.models.io import load_bundle
from semtile.store import open_store

from scan_compare import assert_clean_or_absent, assert_same_results

SETTINGS = EngineSettings(tile=64, halo=8, batch_size=4)
OPTIONS = ProcessOptions(tile=64, halo=8, batch_size=4)
CLI = ["--tile", "64", "--halo", "8", "--batch-size", "4", "--engine", "torch-cpu"]
DAY = 24 * 3600



def _passes(bundle):
    return [segment_pass(load_bundle(bundle), "torch-cpu", SETTINGS, OPTIONS)]



@pytest.fixture()
def reference(tmp_path, scans, tiny_bundle) -> Path:
    out = tmp_path / "clean.zarr"
    assert run_process(scans, out, passes=_passes(tiny_bundle), options=OPTIONS).exit_code == 0
    return out


def _unshare_ok() -> str:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) for a second PID namespace"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return "" if probe.returncode == 0 else f"unshare --pid failed here: {probe.stderr.decode()[:200]}"


@pytest.mark.slow
def test_clean_up_from_another_pid_namespace_spares_a_live_writer(tmp_path, scans, reference, tiny_bundle):
    why = _unshare_ok()
    if why:
        pytest.skip(why)
    hold, out, scratch = tmp_path / "hold", tmp_path / "live.zarr", tmp_path / "scratch"
    hold.mkdir()
    (hold / "arm").write_text("")
    writer = subprocess.Popen([sys.executable, "-m", "semtile.cli.main", "--log-json", "process", *map(str, scans),
                               "--out", str(out), "--model", str(tiny_bundle), *CLI, "--scratch", str(scratch)],
                              env=hooked_env(SEMTILE_TEST_HOLD=str(hold), SEMTILE_TEST_HOLD_IN="publish"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(hold.glob("held-*")) and writer.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert list(hold.glob("held-*")), writer.stderr.read()[-3000:] if writer.poll() is not None else "no hold"
        staged = Path(next(hold.glob("held-*")).read_text())
        assert staged.is_dir() and any(scratch.iterdir())
        # Another "node": same host name, another PID namespace, where the writer's pid does not exist.
        clean = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                                "import sys; from semtile.store import open_store; "
                                "from semtile.execution.batch import clean_stale_scratch; "
                                "print(open_store(sys.argv[1]).clean_stale(), clean_stale_scratch(sys.argv[2]))",
                                str(out), str(scratch)], env=hooked_env(), capture_output=True, text=True, timeout=120)
        assert clean.returncode == 0, clean.stderr[-3000:]
        assert clean.stdout.split() == ["0", "0"], clean.stdout
        assert staged.is_dir(), "the live writer's staged result was removed"
    finally:
        (hold / "go").write_text("")
    _, stderr = writer.communicate(timeout=120)
    assert writer.returncode == 0, stderr[-3000:]
    assert_same_results(out, reference, tol=1e-6)


def test_a_symlinked_tmp_folder_is_refused_and_what_it_points_to_survives(tmp_path, scans, tiny_bundle):
    out = tmp_path / "shared.zarr"
    open_store(out)  # an existing store, then someone makes its temporaries folder a link
    victim = tmp_path / "someone-elses"
    victim.mkdir()
    old = time.time() - 2 * DAY
    names = ["thesis.tex", "partial~" + "a" * 32 + "~" + "b" * 12, "partial~host~1~0~abc"]
    for name in names:
        (victim / name).write_text("precious")
        os.utime(victim / name, (old, old))
    (out / ".semtile").mkdir(exist_ok=True)
    shutil.rmtree(out / ".semtile" / "tmp", ignore_errors=True)
    os.symlink(victim, out / ".semtile" / "tmp")
    # The scratch root holds links named like semtile's scratch, to folders that are not semtile's.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for name in ("semtile-scratch-host-1-x", "semtile-run~" + "c" * 32 + "~abcd1234"):
        os.symlink(victim, scratch / name)
        os.utime(scratch / name, (old, old), follow_symlinks=False)
    result = CliRunner().invoke(main, ["process", *map(str, scans), "--out", str(out), "--model", str(tiny_bundle),
                                       *CLI, "--scratch", str(scratch)])
    assert result.exit_code == 2, result.output
    assert "symbolic link" in result.output and str(out / ".semtile" / "tmp") in result.output
    assert sorted(p.name for p in victim.iterdir()) == sorted(names)
    assert all((victim / n).read_text() == "precious" for n in names)
    assert all((scratch / n).is_symlink() for n in ("semtile-scratch-host-1-x", "semtile-run~" + "c" * 32 + "~abcd1234"))


def test_a_file_system_without_hard_links(tmp_path, scans, reference, tiny_bundle, monkeypatch):
    """Claims, add_maps and clean-up where os.link fails (as on some network and FAT file systems)."""
    import numpy as np

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted (no hard links here)")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "nolinks.zarr"
    assert run_process(scans, out, passes=_passes(tiny_bundle), options=OPTIONS).exit_code == 0
    assert_same_results(out, reference, tol=1e-6)
    store = open_store(out)
    name = store.names()[0]
    store.add_maps(name, {"extra": np.ones(store.read(name).mask.shape[-2:], np.float32)})
    assert_same_results(out, reference, tol=1e-6)
    assert not list((out / ".semtile" / "tmp").iterdir()) and store.clean_stale() == 0
    assert not list((out / ".semtile" / "leases").glob("*.json")) or all(
        p.name.endswith(".json") for p in (out / ".semtile" / "leases").iterdir())


def _mount_tmpfs(where: Path, size: str) -> str:
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return "" if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.decode()[:200]}"


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_at_store_creation_is_one_line_and_exit_2(tmp_path, scans, tiny_bundle):
    disk = tmp_path / "disk"
    why = _mount_tmpfs(disk, "256k")
    if why:
        pytest.skip(why)
    try:
        _fill(disk)
        result = CliRunner().invoke(main, ["process", *map(str, scans), "--out", str(disk / "new.zarr"),
                                           "--model", str(tiny_bundle), *CLI, "--scratch", str(tmp_path / "s")])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines == [f"Error: {disk / 'new.zarr'}: cannot create the result store (No space left on device)"], \
            result.output
        assert not (disk / "new.zarr").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)])


@pytest.mark.slow
def test_a_disk_full_mid_run_stops_new_work_once(tmp_path, scans, reference, tiny_bundle, monkeypatch):
    from semtile.store.directory import DirectoryStore

    disk = tmp_path / "disk"
    why = _mount_tmpfs(disk, "8m")
    if why:
        pytest.skip(why)
    out = disk / "r.zarr"
    real = DirectoryStore._publish
    published = []

    def publish_then_fill(self, staged, final):  # the disk fills up right after the first result is in
        real(self, staged, final)
        published.append(final.name)
        if len(published) == 1:
            _fill(disk)

    try:
        monkeypatch.setattr(DirectoryStore, "_publish", publish_then_fill)
        many = scans * 1  # the 4 scans; the disk is full after the first
        result = CliRunner().invoke(main, ["--log-json", "process", *map(str, many), "--out", str(out),
                                           "--model", str(tiny_bundle), *CLI, "--batch-size", "1",
                                           "--scratch", str(tmp_path / "s")])
        assert result.exit_code == 1, result.output
        assert result.output.count('"event": "disk_full"') == 1, result.output[-3000:]
        assert result.output.count("STOPPED") == 1
        failed = result.output.count('"event": "image_failed"')
        assert 1 <= failed <= 2, result.output[-3000:]  # the one writing, perhaps the next in hand; not the rest
        assert_clean_or_absent(out, reference)
        monkeypatch.setattr(DirectoryStore, "_publish", real)
        (disk / "filler").unlink()
        rerun = CliRunner().invoke(main, ["process", *map(str, scans), "--out", str(out), "--model", str(tiny_bundle),
                                          *CLI, "--scratch", str(tmp_path / "s")])
        assert rerun.exit_code == 0, rerun.output
        assert_same_results(out, reference, tol=1e-6)
    finally:
        subprocess.run(["umount", "-l", str(disk)])

"""What ``semtile process`` shows: on a terminal (a real pseudo-terminal) the bar and one short line per
failure, details with -v, nothing but failures and the summary with -q; the logging options go before or
after the command."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from click.testing import CliRunner

from semtile.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = 80
OPTIONS = ["--tile", "64", "--halo", "8", "--engine", "torch-cpu"]


@pytest.fixture()
def scans(tmp_path, tiny_dataset) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in sorted((tiny_dataset / "images").glob("*.tif"))[:2]:
        shutil.copy(path, folder / path.name)
    (folder / "notes.tif").write_text("this is a lab note, not an image\n")
    return folder


def on_terminal(*args: str) -> tuple[int, str]:
    """Run ``semtile ARGS`` with stdout and stderr on a pseudo-terminal COLUMNS wide; its exit code and output."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(COLUMNS), "TERM": "xterm"}
    child = subprocess.Popen([sys.executable, "-c", "from semtile.cli.main import main; main()", *args],
                             stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env, cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return child.wait(timeout=300), b"".join(chunks).decode(errors="replace")


def screen_lines(output: str) -> list[str]:
    """The lines left on screen: each line's last redraw after a carriage return, escapes removed."""
    lines = []
    for line in output.replace("\r\n", "\n").split("\n"):
        line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line.split("\r")[-1])
        if line.strip():
            lines.append(line)
    return lines


def test_a_terminal_shows_the_bar_and_one_short_line_per_failure(scans, tiny_bundle, tmp_path):
    code, output = on_terminal("process", str(scans), "--out", str(tmp_path / "r.zarr"), "--model", str(tiny_bundle),
                               *OPTIONS)
    assert code == 1, output
    lines = screen_lines(output)
    assert "images" in output and "100%" in output  # the bar was drawn
    failed = [line for line in lines if line.startswith("FAILED ")]
    assert len(failed) == 1 and "notes.tif" in failed[0], lines
    assert all(len(line) <= COLUMNS for line in lines), lines
    assert not any(word in output for word in ("run_start", "run_end", "timestamp=", "Traceback")), lines
    assert lines[-1].startswith("2 done, 0 skipped"), lines
    assert len(lines) <= 4, lines  # the failure, the bar, the summary (and a deprecation-free start)


def test_verbose_after_the_command_shows_every_event(scans, tiny_bundle, tmp_path):
    code, output = on_terminal("process", str(scans), "--out", str(tmp_path / "r.zarr"), "--model", str(tiny_bundle),
                               *OPTIONS, "-v")
    assert code == 1, output
    assert "run_start" in output and "run_end" in output and "image_failed" in output


def test_quiet_shows_no_bar(scans, tiny_bundle, tmp_path):
    code, output = on_terminal("process", str(scans), "--out", str(tmp_path / "r.zarr"), "--model", str(tiny_bundle),
                               *OPTIONS, "-q")
    assert code == 1, output
    assert "images" not in output and "%" not in output
    lines = screen_lines(output)
    assert [line for line in lines if line.startswith("FAILED ")] and lines[-1].startswith("2 done"), lines


def test_logging_options_after_the_command(scans, tiny_bundle, tmp_path):
    result = CliRunner().invoke(main, ["process", str(scans), "--out", str(tmp_path / "r.zarr"),
                                       "--model", str(tiny_bundle), *OPTIONS, "--log-json"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {"run_start", "image_failed", "run_end"} <= {e["event"] for e in events}
    assert "FAILED " in result.stderr  # not on a terminal: the summary lists the failures
    text = CliRunner().invoke(main, ["process", str(scans), "--out", str(tmp_path / "r.zarr"),
                                     "--model", str(tiny_bundle), *OPTIONS, "--log-text", "-q"])
    assert text.exit_code == 1 and "run_start" not in text.stderr and "image_failed" in text.stderr


def test_quiet_and_verbose_together_is_a_usage_error():
    result = CliRunner().invoke(main, ["-q", "engines", "-v"])
    assert result.exit_code == 2 and "-q and -v" in result.output


def test_compact_lines(monkeypatch):
    import structlog

    from semtile import logs

    monkeypatch.setattr(logs.shutil, "get_terminal_size", lambda fallback: os.terminal_size((40, 24)))
    line = logs._compact(None, "warning", {"event": "image_failed", "level": "warning", "path": "/a/b/scan 1.tif",
                                           "error": "header claims\n100000x100000", "timestamp": "t"})
    assert line == "FAILED scan 1.tif: header claims 100..." and len(line) == 39
    assert logs._compact(None, "warning", {"event": "deprecated_option", "level": "warning", "option": "--x",
                                           "logger": "semtile.cli"}) == "warning: deprecated_option option=--x"
    for dropped in ({"event": "image_error", "level": "error", "exc_info": True},
                    {"event": "incorrect StripByteCounts", "level": "error", "logger": "tifffile"}):
        with pytest.raises(structlog.DropEvent):
            logs._compact(None, "error", dropped)

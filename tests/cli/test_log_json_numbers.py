"""JSON logs hold JSON values: numpy scalars as numbers, arrays as lists, paths as strings."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import structlog
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.logs import configure_logging, json_default


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_numpy_values_and_paths_become_json_values(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    try:
        configure_logging(json=True)
        structlog.get_logger("semtile.test").info("values", rows=np.int64(77), share=np.float32(0.5),
                                                  ok=np.bool_(True), shape=np.array([2, 3]), path=Path("/a/b.tif"))
        event = json_lines(sys.stderr.getvalue())[-1]
    finally:
        monkeypatch.undo()
        configure_logging(json=False, level=logging.INFO)
    assert event["rows"] == 77 and type(event["rows"]) is int
    assert event["share"] == 0.5 and event["ok"] is True
    assert event["shape"] == [2, 3] and event["path"] == "/a/b.tif"
    assert json_default(object()).startswith("<object")


def test_a_detected_databar_is_logged_as_a_number(tiny_dataset, tiny_bundle, tmp_path):
    scan = sorted((tiny_dataset / "images").glob("*.tif"))[0]
    result = CliRunner().invoke(main, ["--log-json", "process", str(scan), "--out", str(tmp_path / "r.zarr"),
                                       "--model", str(tiny_bundle), "--tile", "64", "--halo", "8",
                                       "--engine", "torch-cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    events = json_lines(result.stderr)
    assert len(events) == len(result.stderr.strip().splitlines()) - 1  # every line but the summary is JSON
    bars = [e["databar_rows"] for e in events if e.get("databar_rows") is not None]
    assert bars, [e["event"] for e in events]
    assert all(type(rows) is int and rows > 0 for rows in bars), bars
    assert '"np.' not in result.stderr

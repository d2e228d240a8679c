"""A logged failure's traceback keeps its frames and drops their local variables (no arrays, no secrets, and
a few kB per failure rather than hundreds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from semtile.execution.outcome import failed_outcome
from semtile.logs import configure_logging


def _fails_holding_a_big_local():
    image = np.arange(200_000, dtype=np.float32)  # a local a traceback with locals would print
    secret = "token-" + "x" * 40
    raise RuntimeError(f"engine crashed on {image.size} pixels ({len(secret)})")


def test_logged_tracebacks_have_frames_but_no_locals(capsys):
    configure_logging(json=True)
    try:
        for i in range(8):
            try:
                _fails_holding_a_big_local()
            except RuntimeError as exc:
                failed_outcome(Path(f"scan-{i}.tif"), exc)
        err = capsys.readouterr().err
    finally:
        configure_logging(json=False)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    errors = [e for e in events if e["event"] == "image_error"]
    assert len(errors) == 8 and len([e for e in events if e["event"] == "image_failed"]) == 8
    frames = [f for e in errors for trace in e["exception"] for f in trace["frames"]]
    assert any(f["name"] == "_fails_holding_a_big_local" for f in frames)
    assert all("locals" not in f for f in frames)
    assert "token-xxxx" not in err and "image = " not in err
    assert len(err) < 8 * 4000, len(err)

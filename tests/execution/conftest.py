"""Fixtures of the execution tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture()
def scans(tmp_path, tiny_dataset) -> list[Path]:
    """Four of the tiny scans, copied into this test's own folder (faults may remove or replace them)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in sorted((tiny_dataset / "images").glob("*.tif"))[:4]:
        shutil.copy(path, folder / path.name)
    return sorted(folder.glob("*.tif"))

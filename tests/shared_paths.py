"""Where ../shared/data is, for tests that read it and skip without it (importable by name from any test)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip when this checkout has none (a user's clone)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared data {name} not available")
    return path

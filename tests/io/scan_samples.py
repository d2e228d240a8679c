"""Sample scans shared by the tests of semtile.io: real files from ../shared/data and synthetic frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared_paths import SHARED_DATA

LUNG = SHARED_DATA / "lungcells-fei-sem"
VENDOR = SHARED_DATA / "vendor-tiff-samples"


def need(path: Path) -> Path:
    """``path``, or skip the test when this checkout has no shared data."""
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def texture(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A noisy, textured uint8 image (smooth blobs plus noise), like SEM content."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    smooth = 0.5 + 0.25 * np.sin(x / 7.0 + rng.uniform(0, 6)) * np.cos(y / 11.0 + rng.uniform(0, 6))
    img = smooth + rng.normal(0, 0.08, (rows, cols))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def synthetic_frame(rows: int = 200, cols: int = 300, bar: int = 30, seed: int = 0) -> np.ndarray:
    """Textured image with a data bar like semtile's generator writes."""
    frame = texture(rows, cols, seed)
    top = rows - bar
    frame[top] = 255  # uniform bright line
    frame[top + 1 :] = 20  # dark bar body
    rng = np.random.default_rng(seed + 1)
    for _ in range(8):  # bright text-like blocks
        r = int(rng.integers(top + 4, rows - 8))
        c = int(rng.integers(0, cols - 20))
        frame[r : r + 6, c : c + int(rng.integers(4, 20))] = 230
    return frame

"""Defects drawn on synthetic copper surfaces: particles, scratches and pits, with exact masks.

An overlay for :func:`semtile.synth.surfaces.synth_surface_with`: it draws on
the noiseless intensity of the valid area (before shot noise and scan-line
jitter, so the defects carry the same imaging artefacts as the surface) and
returns a label mask of what it drew:

* ``1`` particle: a bright dome (a dust grain or a redeposited nodule far
  larger than the etching nodules) with a brighter rim, the SEM edge effect;
* ``2`` scratch: a long thin groove, darker than the surface, with a bright
  edge on one side;
* ``3`` pit: a dark round hole with a bright rim.

The mask marks every pixel the overlay changed (a defect's rim included).
The number of defects scales with the area (:data:`DEFECTS_PER_MEGAPIXEL`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFECT_CODES", "DEFECTS_PER_MEGAPIXEL", "draw_defects", "defect_overlay"]

DEFECT_CODES = {"particle": 1, "scratch": 2, "pit": 3}
#: Mean number of defects per million pixels of valid area (Poisson).
DEFECTS_PER_MEGAPIXEL = 30.0
_KIND_SHARES = {"particle": 0.45, "scratch": 0.25, "pit": 0.30}


def _box(centre: tuple[float, float], reach: float, shape: tuple[int, int]) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """The window around ``centre`` within ``reach`` pixels, and its (y, x) coordinate grids."""
    y0, y1 = max(int(centre[0] - reach), 0), min(int(centre[0] + reach) + 2, shape[0])
    x0, x1 = max(int(centre[1] - reach), 0), min(int(centre[1] + reach) + 2, shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    return slice(y0, y1), slice(x0, x1), yy, xx


def _particle(rng, intensity, labels, centre):
    r = rng.uniform(3.0, 9.0)
    aspect, angle = rng.uniform(0.75, 1.3), rng.uniform(0.0, np.pi)
    sy, sx, yy, xx = _box(centre, r * 1.4 + 2, intensity.shape)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (dy * np.cos(angle) + dx * np.sin(angle)) * aspect
    v = (-dy * np.sin(angle) + dx * np.cos(angle)) / aspect
    d = np.hypot(u, v) / r  # 1 at the particle's edge
    inside = d <= 1.0
    dome = np.sqrt(np.clip(1.0 - d**2, 0.0, 1.0))
    rim = np.exp(-((d - 0.9) ** 2) / (2 * 0.12**2)) * inside
    patch = intensity[sy, sx]
    bright = rng.uniform(0.3, 0.5)
    patch[inside] = np.clip(patch[inside] * 0.4 + 0.25 + bright * dome[inside] + 0.2 * rim[inside], 0.0, 1.0)
    labels[sy, sx][inside] = DEFECT_CODES["particle"]


def _pit(rng, intensity, labels, centre):
    r = rng.uniform(3.0, 8.0)
    sy, sx, yy, xx = _box(centre, r + 4, intensity.shape)
    d = np.hypot(yy - centre[0], xx - centre[1])
    hole, rim = d <= r, (d > r) & (d <= r + 1.5)
    patch = intensity[sy, sx]
    patch[hole] *= rng.uniform(0.15, 0.4)
    patch[rim] = np.clip(patch[rim] + rng.uniform(0.2, 0.35), 0.0, 1.0)
    labels[sy, sx][hole | rim] = DEFECT_CODES["pit"]


def _scratch(rng, intensity, labels, centre):
    length, width = rng.uniform(60.0, 220.0), rng.uniform(2.0, 4.0)
    angle = rng.uniform(0.0, np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])  # (dy, dx)
    normal = np.array([direction[1], -direction[0]])
    sy, sx, yy, xx = _box(centre, length / 2 + width + 2, intensity.shape)
    ry, rx = yy - centre[0], xx - centre[1]
    along = ry * direction[0] + rx * direction[1]
    across = ry * normal[0] + rx * normal[1]
    on = np.abs(along) <= length / 2
    groove = on & (np.abs(across) <= width / 2)
    edge = on & (across > width / 2) & (across <= width / 2 + 1.5)
    patch = intensity[sy, sx]
    patch[groove] *= rng.uniform(0.35, 0.6)
    patch[edge] = np.clip(patch[edge] + rng.uniform(0.15, 0.3), 0.0, 1.0)
    labels[sy, sx][groove | edge] = DEFECT_CODES["scratch"]


_DRAW = {"particle": _particle, "scratch": _scratch, "pit": _pit}


def draw_defects(rng: np.random.Generator, intensity: np.ndarray, count: int | None = None) -> tuple[np.ndarray, dict]:
    """Draw defects into ``intensity`` (float, [0, 1], changed in place).

    Parameters
    ----------
    rng : the defects' own random stream.
    intensity : 2-D noiseless intensity of the valid area.
    count : how many; by default Poisson with :data:`DEFECTS_PER_MEGAPIXEL` per million pixels.

    Returns
    -------
    labels : uint8 mask of the same shape, :data:`DEFECT_CODES` of what covers each pixel (0: none).
    counts : defects drawn per kind.
    """
    if not isinstance(intensity, np.ndarray) or intensity.ndim != 2 or not np.issubdtype(intensity.dtype, np.floating):
        raise ValueError(f"defects: intensity must be a 2-D float array, got {getattr(intensity, 'shape', type(intensity))}")
    if count is None:
        count = int(rng.poisson(DEFECTS_PER_MEGAPIXEL * intensity.size / 1e6))
    if count < 0:
        raise ValueError(f"defects: count must not be negative, got {count}")
    labels = np.zeros(intensity.shape, dtype=np.uint8)
    kinds = list(_KIND_SHARES)
    shares = np.array(list(_KIND_SHARES.values()))
    counts = dict.fromkeys(kinds, 0)
    for _ in range(count):
        kind = kinds[int(rng.choice(len(kinds), p=shares / shares.sum()))]
        centre = (rng.uniform(0, intensity.shape[0]), rng.uniform(0, intensity.shape[1]))
        _DRAW[kind](rng, intensity, labels, centre)
        counts[kind] += 1
    return labels, counts


def defect_overlay(rng: np.random.Generator, counts: dict | None = None):
    """An overlay for :func:`~semtile.synth.surfaces.synth_surface_with`; ``counts`` (a dict) receives the tally."""

    def overlay(intensity: np.ndarray) -> np.ndarray:
        labels, drawn = draw_defects(rng, intensity)
        if counts is not None:
            counts.update(drawn)
        return labels

    return overlay

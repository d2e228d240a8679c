"""Synthetic SEM surfaces of etched copper with a known ground truth.

Each image mixes rough, nodular regions (adhesive, mask = 1) with smooth
regions (mask = 0). The rough fraction of the valid area is exactly g(t) for
the image's label t; everything else (region shapes and scale, nodule size
and density, brightness, contrast, noise) varies at random from image to
image, so that the only cue to the label is how much of the surface carries
the rough texture. Texture scales are in pixels and do not depend on the
frame size. Imaging artefacts follow an SEM: shot (Poisson) noise, scan-line
jitter, slow brightness drift and a burned-in data bar at the bottom.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from semtile.synth.hypotheses import hypothesis_values

__all__ = ["SynthConfig", "synth_surface", "synth_surface_with", "write_dataset", "databar_height"]

#: Nominal pixel size written into the files' metadata (the paper's 100 nm).
PIXEL_SIZE_M = 1.0e-7


@dataclass(frozen=True)
class SynthConfig:
    """What ``semtile synth`` makes."""

    per_label: int = 12
    labels: int = 16
    size: tuple[int, int] = (960, 1280)  # rows, cols of the whole frame
    truth: str = "sqrt"
    seed: int = 0
    defects: bool = False  # particles, scratches and pits (semtile.synth.defects), masks in defect_masks/


def databar_height(rows: int) -> int:
    """Rows of the burned-in data bar for a frame of ``rows`` rows."""
    return max(24, rows // 16)


def _blur(field: np.ndarray, sigma: float | tuple[float, float]) -> np.ndarray:
    """Periodic Gaussian blur through the FFT (fields are synthetic, wrap is harmless)."""
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    fy = np.fft.fftfreq(field.shape[0])[:, None]
    fx = np.fft.rfftfreq(field.shape[1])[None, :]
    gain = np.exp(-2.0 * np.pi**2 * ((sy * fy) ** 2 + (sx * fx) ** 2))
    return np.fft.irfft2(np.fft.rfft2(field) * gain, s=field.shape)


def _standardise(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / (a.std() + 1e-12)


def _region_mask(rng: np.random.Generator, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Blobby binary regions covering exactly round(fraction * area) pixels."""
    scale = rng.uniform(8.0, 26.0)
    aspect = rng.uniform(0.7, 1.4)
    field = _blur(rng.standard_normal(shape), (scale * aspect, scale / aspect))
    # A little fine structure so region borders are ragged, not smooth contours.
    field = _standardise(field) + 0.1 * _standardise(_blur(rng.standard_normal(shape), 3.0))
    n_on = int(round(fraction * field.size))
    mask = np.zeros(field.size, dtype=np.uint8)
    if n_on:
        mask[np.argpartition(field.ravel(), field.size - n_on)[field.size - n_on:]] = 1
    return mask.reshape(shape)


def _nodules(rng: np.random.Generator, shape: tuple[int, int], density: float, radius: float) -> np.ndarray:
    """Height field of randomly placed nodules (Gaussian bumps of random height)."""
    impulses = (rng.random(shape) < density) * rng.uniform(0.5, 1.5, size=shape)
    return _blur(impulses, radius)


def synth_surface(
    rng: np.random.Generator, shape: tuple[int, int], fraction: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Render one SEM-like frame.

    Returns
    -------
    image : (rows, cols) uint8 frame, data bar included.
    mask : (rows, cols) uint8 ground truth, 1 = rough/adhesive, 0 in the data bar.
    bar_rows : number of data-bar rows at the bottom.
    """
    image, mask, bar_rows, _ = synth_surface_with(rng, shape, fraction, None)
    return image, mask, bar_rows


#: ``overlay(intensity) -> mask``: draws on the noiseless intensity of the valid area (in place,
#: values in [0, 1]) before shot noise and scan-line jitter, and returns the uint8 mask of what it drew.
Overlay = Callable[[np.ndarray], np.ndarray]


def synth_surface_with(
    rng: np.random.Generator, shape: tuple[int, int], fraction: float, overlay: Overlay | None
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    """:func:`synth_surface` with an ``overlay`` (e.g. defects) drawn into the frame.

    The overlay's mask gets the same scan-line jitter as the image and zeros
    in the data bar; it is returned fourth (None without an overlay). Without
    an overlay the frame is exactly :func:`synth_surface`'s.
    """
    rows, cols = shape
    bar_rows = databar_height(rows)
    valid = (rows - bar_rows, cols)
    mask = _region_mask(rng, valid, fraction)

    # Rough texture: dense nodules; smooth texture: gentle undulation with a few stray nodules.
    radius = rng.uniform(1.6, 3.2)
    density = rng.uniform(0.12, 0.3) / radius**2
    rough_raw = _nodules(rng, valid, density, radius)
    rough = _standardise(rough_raw)
    smooth = 0.35 * _standardise(_blur(rng.standard_normal(valid), rng.uniform(6.0, 14.0)))
    smooth += 0.8 * _nodules(rng, valid, density * rng.uniform(0.0, 0.03), radius) / (rough_raw.std() + 1e-9)
    soft = _blur(mask.astype(np.float64), 1.2)  # region borders a pixel or two wide
    height = soft * rough + (1.0 - soft) * smooth

    # SEM contrast: topography plus a bright rim on slopes (edge effect).
    gy, gx = np.gradient(height)
    signal = height + rng.uniform(0.6, 1.6) * np.hypot(gx, gy)
    base = rng.uniform(0.3, 0.55)
    gain = rng.uniform(0.08, 0.15)
    # Slow brightness drift: a tilted plane and a very smooth field.
    yy, xx = np.mgrid[0:valid[0], 0:valid[1]]
    drift = 1.0 + rng.uniform(-0.12, 0.12) * (yy / valid[0] - 0.5) + rng.uniform(-0.12, 0.12) * (xx / valid[1] - 0.5)
    drift += 0.05 * _standardise(_blur(rng.standard_normal(valid), 120.0))
    intensity = np.clip((base + gain * signal) * drift, 0.0, 1.0)
    drawn = None
    if overlay is not None:
        drawn = np.asarray(overlay(intensity), dtype=np.uint8)
        if drawn.shape != intensity.shape:
            raise ValueError(f"overlay mask {drawn.shape} does not match the valid area {intensity.shape}")
    # Shot noise: electrons counted per pixel.
    dose = rng.uniform(50.0, 150.0)
    intensity = rng.poisson(intensity * dose) / dose

    # Scan-line jitter: each line shifted by a bounded random walk of whole pixels.
    offsets = np.clip(np.cumsum(rng.integers(-1, 2, size=valid[0]) * (rng.random(valid[0]) < 0.2)), -2, 2)
    cols_idx = (np.arange(valid[1])[None, :] - offsets[:, None]) % valid[1]
    intensity = np.take_along_axis(intensity, cols_idx, axis=1)
    mask = np.take_along_axis(mask, cols_idx, axis=1)
    if drawn is not None:
        full_drawn = np.zeros(shape, dtype=np.uint8)
        full_drawn[: valid[0]] = np.take_along_axis(drawn, cols_idx, axis=1)
        drawn = full_drawn

    image = np.empty(shape, dtype=np.uint8)
    image[: valid[0]] = np.clip(np.rint(intensity * 255.0), 0, 255).astype(np.uint8)
    image[valid[0]:] = _databar(rng, (bar_rows, cols))
    full_mask = np.zeros(shape, dtype=np.uint8)
    full_mask[: valid[0]] = mask
    return image, full_mask, bar_rows, drawn


def _databar(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A burned-in data bar: a white rule, a dark body, blocks of 'text' and a scale bar."""
    rows, cols = shape
    bar = np.full(shape, 18, dtype=np.uint8)
    bar[0] = 255
    glyph_h = max(6, rows // 3)
    for line_top in (3, 3 + glyph_h + 3):
        if line_top + glyph_h >= rows - 1:
            break
        x = 6
        while x < cols * 0.7:
            width = int(rng.integers(3, 7))
            if rng.random() > 0.15:
                bar[line_top: line_top + glyph_h, x: x + width] = 230
            x += width + 2
    bar[rows // 2: rows // 2 + 3, int(cols * 0.78): int(cols * 0.95)] = 255
    return bar


def write_dataset(out: Path, config: SynthConfig) -> list[dict]:
    """Write ``images/``, ``masks/``, ``labels.csv`` and ``truth.csv`` under ``out``.

    With ``config.defects``, also ``defect_masks/`` (uint8: 0 none, 1 particle,
    2 scratch, 3 pit) and ``defects.csv`` (path, particles, scratches, pits,
    defect_fraction of the valid area); the defects have their own random
    stream, so the surface under them is the defect-free surface's layout.
    Returns the truth rows (path, label, adhesive_ratio).
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if config.defects:
        from semtile.synth.defects import defect_overlay

        (out / "defect_masks").mkdir(parents=True, exist_ok=True)
    g = hypothesis_values(config.truth, config.labels)
    rows: list[dict] = []
    defect_rows: list[dict] = []
    for label in range(config.labels):
        for index in range(config.per_label):
            # One stream per image: the same (seed, label, index) gives the same image
            # whatever --per-label is.
            rng = np.random.default_rng([config.seed, label, index])
            name = f"t{label:02d}_{index:04d}.tif"
            if config.defects:
                counts: dict = {}
                overlay = defect_overlay(np.random.default_rng([config.seed, label, index, 0xDEF]), counts)
                image, mask, bar_rows, drawn = synth_surface_with(rng, config.size, float(g[label]), overlay)
                tifffile.imwrite(out / "defect_masks" / name, drawn, metadata=None)
                defect_rows.append({"path": f"images/{name}", "particles": counts["particle"],
                                    "scratches": counts["scratch"], "pits": counts["pit"],
                                    "defect_fraction": f"{float((drawn[: drawn.shape[0] - bar_rows] > 0).mean()):.6f}"})
            else:
                image, mask, bar_rows = synth_surface(rng, config.size, float(g[label]))
            tifffile.imwrite(out / "images" / name, image, metadata={"pixel_size_m": PIXEL_SIZE_M})
            tifffile.imwrite(out / "masks" / name, mask, metadata=None)
            ratio = float(mask[: mask.shape[0] - bar_rows].mean())
            rows.append({"path": f"images/{name}", "label": label, "adhesive_ratio": ratio})
    if defect_rows:
        with (out / "defects.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(defect_rows[0]))
            writer.writeheader()
            writer.writerows(defect_rows)
    with (out / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([r["path"], r["label"]] for r in rows)
    with (out / "truth.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "adhesive_ratio"])
        writer.writerows([r["path"], r["label"], f"{r['adhesive_ratio']:.6f}"] for r in rows)
    return rows

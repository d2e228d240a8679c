"""A package's preprocessing over a whole scan: statistics taken once over the scan, applied to every tile alike.

bioimage.io preprocessing (``zero_mean_unit_variance``, ``scale_range``
percentiles...) is defined over the whole input tensor. Computed per tile,
neighbouring tiles would see the same pixels scaled differently and disagree
where they overlap; here the statistics come from the whole valid area of the
scan (exactly for scans up to :data:`EXACT_PIXELS`, from a fine histogram
beyond), and :class:`PreprocessedScan` applies the ops, with those numbers,
to whatever window the tile reader slices.

The package's input values are the scan's stored gray values: semtile's
normalised gray in [0, 1] times the range of the sample type (255 for 8-bit,
65535 for 16-bit; 1 for float scans, which semtile scales by their range).
The formulas are bioimage.io's (and bioimageio.core's): ``(x - mean) / (std +
eps)``, ``(x - lower) / (upper - lower + eps)`` with linear-interpolated
percentiles, ``gain * x + offset``, clip, sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semtile.errors import SemtileError

__all__ = ["EXACT_PIXELS", "raw_scale", "scan_statistics", "PreprocessedScan", "apply_ops", "needs_statistics"]

#: Scans up to this many pixels get exact percentiles (read whole); larger ones a histogram of HISTOGRAM_BINS.
EXACT_PIXELS = 2**26
HISTOGRAM_BINS = 2**20
_BAND_ROWS = 1024


def raw_scale(dtype: str | None) -> float:
    """What semtile's gray in [0, 1] is multiplied by to give the stored values of a scan of ``dtype``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return 1.0
    return float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0


def needs_statistics(ops) -> list[float]:
    """The percentiles (in [0, 100]) the ops need; mean and std are always computed when any op needs them."""
    qs = []
    for name, kwargs in ops:
        if name == "scale_range":
            qs += [float(kwargs.get("min_percentile", 0.0)), float(kwargs.get("max_percentile", 100.0))]
    return qs


def _bands(image):
    rows = image.shape[0]
    for y0 in range(0, rows, _BAND_ROWS):
        yield np.asarray(image[y0: y0 + _BAND_ROWS], dtype=np.float64)


def scan_statistics(image, ops, scale: float) -> dict:
    """Mean, std and the needed percentiles of ``image * scale`` over the whole scan (float64)."""
    if not any(name in ("zero_mean_unit_variance", "scale_range") for name, _ in ops):
        return {}
    pixels = int(np.prod(image.shape))
    qs = needs_statistics(ops)
    if pixels <= EXACT_PIXELS:
        x = np.asarray(image[...], dtype=np.float64) * scale
        stats = {"mean": float(x.mean()), "std": float(x.std())}
        if qs:
            stats["percentiles"] = dict(zip(map(str, qs), map(float, np.quantile(x, [q / 100 for q in qs]))))
        return stats
    total = total_sq = 0.0
    lo, hi = np.inf, -np.inf
    for band in _bands(image):
        band = band * scale
        total += float(band.sum())
        total_sq += float(np.square(band).sum())
        lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
    mean = total / pixels
    stats = {"mean": mean, "std": float(np.sqrt(max(0.0, total_sq / pixels - mean * mean)))}
    if qs:
        counts = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        width = (hi - lo) / HISTOGRAM_BINS or 1.0
        for band in _bands(image):
            index = np.clip(((band * scale - lo) / width).astype(np.int64), 0, HISTOGRAM_BINS - 1)
            counts += np.bincount(index.ravel(), minlength=HISTOGRAM_BINS)
        cumulative = np.cumsum(counts)
        stats["percentiles"] = {}
        for q in qs:
            k = min(HISTOGRAM_BINS - 1, int(np.searchsorted(cumulative, q / 100 * (pixels - 1), side="right")))
            stats["percentiles"][str(q)] = float(lo + (k + 0.5) * width) if 0 < q < 100 else (lo if q == 0 else hi)
    return stats


def apply_ops(x: np.ndarray, ops, stats: dict) -> np.ndarray:
    """The ops (name, kwargs), in order, on ``x`` (float32 out), with the scan's ``stats``."""
    x = np.asarray(x, dtype=np.float32)
    for name, kw in ops:
        if name == "fixed_zero_mean_unit_variance":
            mean, std = np.asarray(kw["mean"], np.float32), np.asarray(kw["std"], np.float32)
            x = (x - mean) / (std + np.float32(kw.get("eps", 1e-6)))
        elif name == "zero_mean_unit_variance":
            x = (x - np.float32(stats["mean"])) / np.float32(stats["std"] + float(kw.get("eps", 1e-6)))
        elif name == "scale_range":
            p = stats["percentiles"]
            lower = p[str(float(kw.get("min_percentile", 0.0)))]
            upper = p[str(float(kw.get("max_percentile", 100.0)))]
            x = (x - np.float32(lower)) / np.float32(upper - lower + float(kw.get("eps", 1e-6)))
        elif name == "scale_linear":
            x = x * np.asarray(kw.get("gain", 1.0), np.float32) + np.asarray(kw.get("offset", 0.0), np.float32)
        elif name == "clip":
            x = np.clip(x, kw.get("min"), kw.get("max"))
        elif name == "sigmoid":
            x = 1.0 / (1.0 + np.exp(-x))
        elif name == "binarize":
            x = (x > np.float32(kw["threshold"])).astype(np.float32)
        elif name == "ensure_dtype":
            if kw.get("dtype", "float32") != "float32":
                x = x.astype(kw["dtype"])
        else:
            raise SemtileError(f"preprocessing {name!r} is not supported")
        x = np.asarray(x, dtype=np.float32)
    return x


@dataclass
class PreprocessedScan:
    """A scan's normalised array seen through a package's preprocessing: slicing gives preprocessed float32."""

    image: object  # 2-D, sliceable (zarr or numpy): semtile's gray in [0, 1]
    ops: tuple
    scale: float
    stats: dict

    @property
    def shape(self) -> tuple:
        return tuple(self.image.shape)

    @property
    def dtype(self):
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return 2

    def __getitem__(self, key) -> np.ndarray:
        raw = np.asarray(self.image[key], dtype=np.float32) * np.float32(self.scale)
        return apply_ops(raw, self.ops, self.stats)

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)

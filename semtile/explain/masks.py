"""Masks from explanations: heat map -> binary mask, and centre-biased choice among candidate masks.

* :func:`heat_to_mask` is Hasic & Kofler's (003) Algorithm 2: normalise the
  whole map by its maximum, keep the pixels above ``tau``. It is applied to a
  whole-image map only, never tile by tile (that would make seams).
  :func:`otsu_mask` thresholds the same normalised map at Otsu's threshold.
* :func:`centre_biased_mask` is 003's Algorithm 1 (stages 1 and 2): among
  candidate masks of area ``A > beta * H * W``, the one of highest
  ``S = A * (1 - d) ** alpha`` (``d``: distance of its centroid to the image
  centre over the image diagonal); then the largest connected component of its
  inverse is the mask.
* :func:`candidate_masks` proposes the candidates for an image without a
  model: connected components of thresholded maps (the smoothed image and a
  local-texture map, each at Otsu's threshold, both sides) and the segments
  of scikit-image's SLIC.

Conventions (so a hand-computed case can be checked exactly): pixel ``(r, c)``
sits at coordinates ``(r, c)``, the image centre at ``((H - 1) / 2, (W - 1) / 2)``;
connected components are 4-connected; ties go to the first candidate (lowest
index) and to the component met first in raster order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["normalise_by_max", "heat_to_mask", "otsu_threshold", "otsu_mask", "CentreChoice", "centre_scores",
           "centre_biased_mask", "components", "largest_component", "candidate_masks"]


def normalise_by_max(heat: np.ndarray) -> np.ndarray:
    """``heat / max(heat)`` as float32 (Algorithm 2, line 2); all zeros where the maximum is not positive."""
    e = np.asarray(heat, dtype=np.float32)
    if e.ndim != 2:
        raise ValueError(f"a heat map is 2-D, got shape {e.shape}")
    top = float(np.nanmax(e)) if e.size and np.isfinite(e).any() else 0.0
    if not top > 0.0:
        return np.zeros(e.shape, dtype=np.float32)
    out = e / np.float32(top)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def heat_to_mask(heat: np.ndarray, tau: float) -> np.ndarray:
    """003's Algorithm 2: ``heat / max(heat) > tau`` (bool). A map with no positive value gives an empty mask."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    return normalise_by_max(heat) > np.float32(tau)


def otsu_threshold(heat: np.ndarray) -> float:
    """Otsu's threshold of the max-normalised map (scikit-image); 1.0 (nothing kept) for a constant map."""
    from skimage.filters import threshold_otsu

    e = normalise_by_max(heat)
    if e.size == 0 or float(e.min()) == float(e.max()):
        return 1.0
    return float(threshold_otsu(e))


def otsu_mask(heat: np.ndarray) -> np.ndarray:
    """The max-normalised map above Otsu's threshold (bool)."""
    return normalise_by_max(heat) > np.float32(otsu_threshold(heat))


# -- 003's Algorithm 1 ------------------------------------------------------------------------------------------


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a binary mask: (labels 1..n in raster order of first pixel, n)."""
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(mask, dtype=bool))
    return labels, int(n)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of ``mask`` (bool; the first in raster order on a tie; empty if none)."""
    labels, n = components(mask)
    if n == 0:
        return np.zeros(np.shape(mask), dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return labels == (int(np.argmax(sizes)) + 1)


@dataclass(frozen=True)
class CentreChoice:
    """The outcome of :func:`centre_biased_mask`."""

    mask: np.ndarray | None  # the final mask M (None when no candidate is large enough)
    index: int | None  # k: the chosen candidate
    scores: np.ndarray  # S_i of every candidate (NaN where A_i <= beta * H * W)
    areas: np.ndarray  # A_i
    distances: np.ndarray  # d_i


def centre_scores(candidates: Sequence[np.ndarray], alpha: float = 1.0, beta: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, A, d) of Algorithm 1, lines 2-7, with S = NaN for candidates failing ``A > beta * H * W``
    (and for one covering the whole image, whose inverse is empty)."""
    if not candidates:
        raise ValueError("no candidate masks")
    shape = np.shape(candidates[0])
    if len(shape) != 2:
        raise ValueError(f"candidate masks are 2-D, got shape {shape}")
    h, w = shape
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    diagonal = float(np.hypot(h, w))
    areas, dists, scores = [], [], []
    for i, m in enumerate(candidates):
        m = np.asarray(m, dtype=bool)
        if m.shape != shape:
            raise ValueError(f"candidate {i} has shape {m.shape}, the first {shape}")
        rows, cols = np.nonzero(m)
        a = rows.size
        if a:
            d = float(np.hypot(rows.mean() - centre[0], cols.mean() - centre[1])) / diagonal
        else:
            d = float("nan")
        areas.append(a)
        dists.append(d)
        # A candidate covering the whole image has an empty inverse (stage 2 would return nothing): not eligible.
        scores.append(a * (1.0 - d) ** alpha if beta * h * w < a < h * w else float("nan"))
    return np.array(scores, dtype=np.float64), np.array(areas, dtype=np.int64), np.array(dists, dtype=np.float64)


def centre_biased_mask(candidates: Sequence[np.ndarray], alpha: float = 1.0, beta: float = 0.0) -> CentreChoice:
    """003's Algorithm 1, stages 1-2, on given candidate masks.

    ``k = argmax_i S_i`` over the candidates with ``beta * H * W < A_i < H * W``, where
    ``S_i = A_i * (1 - d_i) ** alpha``; then ``M`` = the largest 4-connected
    component of ``1 - M_k``. ``alpha >= 0`` is the centre bias (0: the
    largest candidate), ``beta`` in [0, 1) the minimum area ratio.
    """
    if alpha < 0:
        raise ValueError(f"alpha (centre bias) must be >= 0, got {alpha}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta (minimum area ratio) must lie in [0, 1), got {beta}")
    scores, areas, dists = centre_scores(candidates, alpha, beta)
    if not np.isfinite(scores).any():
        return CentreChoice(None, None, scores, areas, dists)
    k = int(np.nanargmax(scores))  # the first on a tie
    inverse = ~np.asarray(candidates[k], dtype=bool)
    return CentreChoice(largest_component(inverse), k, scores, areas, dists)


# -- candidates for an image ------------------------------------------------------------------------------------


def _component_masks(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    labels, n = components(mask)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return [labels == k for k in range(1, n + 1) if sizes[k] >= min_area]


def candidate_masks(image: np.ndarray, heat_maps: Sequence[np.ndarray] = (), *, taus: Sequence[float] = (),
                    slic_segments: int = 8, smooth: float = 2.0, texture_window: int = 9,
                    min_area_ratio: float = 0.001, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Candidate masks for :func:`centre_biased_mask`, and where each came from.

    * connected components of thresholded maps: the image smoothed (Gaussian,
      ``smooth`` pixels) and its local texture (standard deviation over
      ``texture_window`` pixels), each at Otsu's threshold, above and below;
      each given heat map at Otsu's threshold and at each of ``taus``
      (Algorithm 2);
    * the ``slic_segments`` segments of SLIC (scikit-image) on the image.

    Components smaller than ``min_area_ratio`` of the image are dropped (the
    selection's own ``beta`` decides what is large enough).
    """
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import slic

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 2:
        raise ValueError(f"candidate masks need a 2-D image of at least 2x2 pixels, got shape {img.shape}")
    min_area = max(1, int(min_area_ratio * img.size))
    out: list[np.ndarray] = []
    origin: list[str] = []

    def add(mask: np.ndarray, what: str) -> None:
        for m in _component_masks(mask, min_area):
            out.append(m)
            origin.append(what)

    smoothed = gaussian(img, sigma=smooth, preserve_range=True)
    mean = ndimage.uniform_filter(img, texture_window)
    texture = np.sqrt(np.maximum(ndimage.uniform_filter(img * img, texture_window) - mean * mean, 0.0))
    texture = gaussian(texture, sigma=smooth, preserve_range=True)
    for name, values in (("smoothed image", smoothed), ("texture", texture)):
        if float(values.min()) == float(values.max()):
            continue
        t = threshold_otsu(values)
        add(values > t, f"{name} > otsu")
        add(values <= t, f"{name} <= otsu")
    for i, heat in enumerate(heat_maps):
        heat = np.asarray(heat, dtype=np.float32)
        if heat.shape != img.shape:
            raise ValueError(f"heat map {i} has shape {heat.shape}, the image {img.shape}")
        add(otsu_mask(heat), f"heat {i} > otsu")
        for tau in taus:
            add(heat_to_mask(heat, tau), f"heat {i} > {tau:g}")
    if slic_segments > 1:
        lo, hi = float(img.min()), float(img.max())
        scaled = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        segments = slic(scaled, n_segments=slic_segments, compactness=0.1, channel_axis=None, start_label=1,
                        enforce_connectivity=True)
        for k in np.unique(segments):
            m = segments == k
            if int(m.sum()) >= min_area:
                out.append(m)
                origin.append("slic")
    return out, origin

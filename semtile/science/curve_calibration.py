"""Reading a learned hypothesis g(t) out of a weak-label segmenter.

Weak labels constrain only the mean of each mask, so a jointly fitted curve
follows whatever decision boundary the segmenter settles on: a network that
also marks a band of smooth pixels along every region border reports too
much rough area, most where borders are longest (mid-range t), and the curve
follows it. The pinned ends are the only absolute information there is, and
an end strictly inside (0, 1) fixes the decision threshold: the fraction of
pixels above a threshold falls monotonically as the threshold rises, so
exactly one threshold makes the end label's masks cover its pinned fraction.
A pure end (g = 1 or 0) cannot fix it: every threshold errs on the same side
there, and chasing it drives the threshold to an extreme. So the threshold
is set by the ends inside (0, 1) (their errors summing to zero when there are
two) and left at the trained boundary (logit 0) when both ends are pure.

The threshold is folded into the bias of the segmenter's output layer, so the
saved model's masks (probability > 0.5) are the calibrated ones, and g is
read out as the mean calibrated mask of each label on the training images,
made monotone (isotonic regression) with its ends pinned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import isotonic_regression

from semtile.inference.whole_image import image_logits

__all__ = ["LOGIT_EDGES", "CurveReadout", "logit_counts", "pinned_threshold", "read_out_curve"]

#: Bin edges of the logit histograms: the threshold is found to 0.02 of a logit.
LOGIT_EDGES = np.linspace(-40.0, 40.0, 4001)


@dataclass(frozen=True)
class CurveReadout:
    """A learned curve read out of a segmenter."""

    threshold: float  # logit at which a pixel is called rough
    g: np.ndarray  # monotone, ends pinned
    raw: np.ndarray  # mean calibrated mask per label (NaN where a label has no images)
    ends_used: tuple[int, ...]  # label indices whose pinned values fixed the threshold


def logit_counts(network: torch.nn.Module, images: list[np.ndarray], multiple: int) -> np.ndarray:
    """Histogram of each image's logits over :data:`LOGIT_EDGES` (shape images x bins + 2).

    Column 0 counts logits below the first edge, the last column those above the last.
    """
    counts = np.zeros((len(images), len(LOGIT_EDGES) + 1), dtype=np.int64)
    for i, image in enumerate(images):
        logits = image_logits(network, image, multiple).ravel()
        counts[i] = np.bincount(np.searchsorted(LOGIT_EDGES, logits, side="right"), minlength=len(LOGIT_EDGES) + 1)
    return counts


def _fraction_above(counts: np.ndarray) -> np.ndarray:
    """Fraction of pixels above each edge, per row of ``counts`` (rows x edges)."""
    total = counts.sum(axis=1, keepdims=True)
    above = total - np.cumsum(counts, axis=1)[:, :-1]  # pixels in bins right of each edge
    return above / np.maximum(total, 1)


def pinned_threshold(label_counts: np.ndarray, g_range: tuple[float, float]) -> tuple[float, tuple[int, ...]]:
    """The logit threshold fixed by the pinned ends inside (0, 1).

    Parameters
    ----------
    label_counts : (labels, bins + 2) logit histograms pooled per label.
    g_range : (hi, lo), the pinned values of the first and the last label.

    Returns
    -------
    threshold : logit; 0 when no end lies strictly inside (0, 1).
    ends_used : the label indices that fixed it.
    """
    hi, lo = g_range
    ends = [(0, hi), (len(label_counts) - 1, lo)]
    used = [(k, v) for k, v in ends if 0.0 < v < 1.0 and label_counts[k].sum() > 0]
    if not used:
        return 0.0, ()
    fractions = _fraction_above(label_counts[[k for k, _ in used]])
    # Falls monotonically with the edge: the edge where the summed error is smallest
    # (the middle one of a tie).
    residual = np.abs(sum(fractions[j] - v for j, (_, v) in enumerate(used)))
    best = np.flatnonzero(residual == residual.min())
    return float(LOGIT_EDGES[best[len(best) // 2]]), tuple(k for k, _ in used)


def read_out_curve(counts: np.ndarray, label_index: np.ndarray, n_labels: int,
                   g_range: tuple[float, float], fallback: np.ndarray) -> CurveReadout:
    """Calibrate the threshold on the ends and read g out of per-image logit histograms.

    Parameters
    ----------
    counts : (images, bins + 2) from :func:`logit_counts`.
    label_index : label index of each image.
    n_labels : number of labels.
    g_range : (hi, lo) pinned ends.
    fallback : g for labels without images (the jointly fitted curve).
    """
    label_index = np.asarray(label_index)
    pooled = np.stack([counts[label_index == k].sum(axis=0) for k in range(n_labels)])
    threshold, used = pinned_threshold(pooled, g_range)
    # Fraction of each label's pixels at or above the threshold (an edge), as the masks call it.
    edge = int(np.searchsorted(LOGIT_EDGES, threshold))
    raw = np.where(pooled.sum(axis=1) > 0, _fraction_above(pooled)[:, edge], np.nan)
    images = np.bincount(label_index, minlength=n_labels).astype(float)
    values = np.where(np.isnan(raw), np.asarray(fallback, dtype=float), raw)
    hi, lo = g_range
    g = isotonic_regression(values, weights=np.maximum(images, 1e-6), increasing=hi < lo).x
    g = np.clip(g, min(hi, lo), max(hi, lo))
    g[0], g[-1] = hi, lo
    return CurveReadout(threshold=threshold, g=g, raw=raw, ends_used=used)

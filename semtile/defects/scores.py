"""Scores for defect detection: patch AUC-ROC and average precision, pixel AUROC and PRO, the ROC figure.

* :func:`patch_scores`: AUC-ROC and average precision (scikit-learn's
  ``roc_auc_score`` and ``average_precision_score``) of one score per patch
  against 0/1 labels. With rare defects the AP is the harder number: a
  chance-level score has an AP equal to the prevalence (0.02 at 2%), not 0.5.
* :func:`pixel_auroc`: AUC-ROC over every pixel of anomaly maps against
  defect masks (pooled over images).
* :func:`pro_score`: the per-region overlap of MVTec AD (Bergmann et al.,
  2021): each connected defect region counts equally, whatever its size;
  the mean share of each region above a threshold is integrated over the
  false-positive rate on normal pixels from 0 to ``max_fpr`` (0.3 by
  default) and divided by ``max_fpr``, so 1 is perfect and a random map
  scores about ``max_fpr / 2``. Regions are 8-connected components
  (``skimage.measure.label``).
* :func:`roc_figure`: ROC curves (one per named score) as a PNG.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from semtile.errors import SemtileError

__all__ = ["patch_scores", "pixel_auroc", "pro_score", "map_scores", "roc_figure"]


def _binary(labels, what: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise SemtileError(f"{what}: labels must be a non-empty 1-D sequence, got shape {y.shape}")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise SemtileError(f"{what}: labels must be 0 (normal) or 1 (defect), found {sorted(values, key=str)}")
    y = y.astype(np.int64)
    if y.min() == y.max():
        raise SemtileError(f"{what}: both normal (0) and defect (1) examples are needed, found only {int(y[0])}")
    return y


def _finite(scores, n: int, what: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise SemtileError(f"{what}: {s.size} scores for {n} labels")
    if not np.isfinite(s).all():
        raise SemtileError(f"{what}: scores must be finite ({int((~np.isfinite(s)).sum())} are not)")
    return s


def patch_scores(labels: Sequence[int], scores: Sequence[float], what: str = "patch scores") -> dict:
    """AUC-ROC and average precision of ``scores`` (higher = more likely a defect) against 0/1 ``labels``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = _binary(labels, what)
    s = _finite(scores, len(y), what)
    return {"auroc": float(roc_auc_score(y, s)), "ap": float(average_precision_score(y, s)),
            "n": int(len(y)), "positives": int(y.sum()), "prevalence": float(y.mean())}


def _pairs(maps: Iterable[np.ndarray], masks: Iterable[np.ndarray], what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for i, (m, t) in enumerate(zip(maps, masks, strict=True)):
        m, t = np.asarray(m), np.asarray(t)
        if m.ndim != 2 or m.shape != t.shape:
            raise SemtileError(f"{what}: map {i} has shape {m.shape}, its mask {t.shape}; both must be the same 2-D shape")
        if not np.isfinite(m).all():
            raise SemtileError(f"{what}: map {i} holds values that are not finite")
        pairs.append((m.astype(np.float64, copy=False), t > 0))
    if not pairs:
        raise SemtileError(f"{what}: no maps given")
    return pairs


def pixel_auroc(maps: Iterable[np.ndarray], masks: Iterable[np.ndarray]) -> float:
    """AUC-ROC of every pixel's anomaly value against the defect masks, pooled over all images."""
    from sklearn.metrics import roc_auc_score

    pairs = _pairs(maps, masks, "pixel AUROC")
    values = np.concatenate([m.ravel() for m, _ in pairs])
    truth = np.concatenate([t.ravel() for _, t in pairs])
    if truth.all() or not truth.any():
        raise SemtileError("pixel AUROC: the masks need both defect and normal pixels")
    return float(roc_auc_score(truth, values))


def pro_score(maps: Iterable[np.ndarray], masks: Iterable[np.ndarray], max_fpr: float = 0.3,
              thresholds: int = 1000) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr`` (MVTec AD's PRO)."""
    from skimage.measure import label as connected

    if not 0 < max_fpr <= 1:
        raise SemtileError(f"PRO: max_fpr must lie in (0, 1], got {max_fpr}")
    pairs = _pairs(maps, masks, "PRO")
    regions, normal = [], []
    for m, t in pairs:
        components = connected(t, connectivity=2)
        if components.max():
            order = np.argsort(components.ravel(), kind="stable")
            sorted_ids = components.ravel()[order]
            bounds = np.searchsorted(sorted_ids, np.arange(1, components.max() + 2))
            flat = m.ravel()[order]
            regions += [np.sort(flat[bounds[k]: bounds[k + 1]]) for k in range(components.max())]
        normal.append(m[~t])
    if not regions:
        raise SemtileError("PRO: the masks hold no defect region")
    normal = np.sort(np.concatenate(normal))
    if normal.size == 0:
        raise SemtileError("PRO: the masks leave no normal pixel")
    # Thresholds from the normal pixels' quantiles: FPR runs from 0 to max_fpr evenly.
    fpr_grid = np.linspace(0.0, max_fpr, thresholds)
    cut = np.quantile(normal, 1.0 - fpr_grid, method="linear")
    cut[0] = np.nextafter(normal[-1], np.inf)  # nothing normal above: FPR 0
    fpr = 1.0 - np.searchsorted(normal, cut, side="left") / normal.size
    overlap = np.mean([1.0 - np.searchsorted(r, cut, side="left") / r.size for r in regions], axis=0)
    # The curve ends at (1, 1) (a threshold below every value); sorted by FPR, then overlap.
    fpr, overlap = np.append(fpr, 1.0), np.append(overlap, 1.0)
    order = np.lexsort((overlap, fpr))
    fpr, overlap = fpr[order], overlap[order]
    below = fpr < max_fpr
    above = int(np.argmax(~below))  # the first point at or beyond the limit (the curve's end is one)
    x0, y0 = fpr[below][-1], overlap[below][-1]
    x1, y1 = fpr[above], overlap[above]
    at_limit = y1 if x1 == x0 else y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
    x, y = np.append(fpr[below], max_fpr), np.append(overlap[below], at_limit)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    area = trapezoid(y, x)
    return float(area / max_fpr)


def map_scores(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], max_fpr: float = 0.3) -> dict:
    """Pixel AUROC and PRO of anomaly maps against defect masks, and the defect share of the pixels."""
    maps, masks = list(maps), list(masks)
    pixels = sum(np.asarray(t).size for t in masks)
    defect = sum(int((np.asarray(t) > 0).sum()) for t in masks)
    return {"pixel_auroc": pixel_auroc(maps, masks), "pro": pro_score(maps, masks, max_fpr=max_fpr),
            "pro_max_fpr": max_fpr, "images": len(maps), "defect_pixels": defect,
            "defect_share": float(defect / pixels) if pixels else 0.0}


def roc_figure(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: str | Path, title: str = "") -> Path:
    """ROC curves, one per name (labels, scores), with their AUC and AP in the legend; a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    if not curves:
        raise SemtileError("ROC figure: no curve to draw")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    for name, (labels, scores) in curves.items():
        summary = patch_scores(labels, scores, what=f"ROC figure, {name}")
        fpr, tpr, _ = roc_curve(_binary(labels, name), np.asarray(scores, dtype=np.float64))
        ax.plot(fpr, tpr, lw=1.6, label=f"{name}: AUC {summary['auroc']:.3f}, AP {summary['ap']:.3f}")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance: AUC 0.5")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

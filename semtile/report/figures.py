"""The report's figures, drawn with matplotlib and inlined in the page as PNG data URIs.

matplotlib's object API (``Figure``, no pyplot state) with the Agg canvas:
static pictures that need no script and no network to show, the same library
``semtile evaluate`` and ``semtile hypotheses`` draw with.
"""

from __future__ import annotations

import base64
import io

import numpy as np

from semtile.results import LabelScores

__all__ = ["ratio_distribution", "ratio_against_label", "confusion", "accuracy_per_label", "as_data_uri"]

DPI = 110
MODEL, EXPERT, CURVE = "#1f77b4", "#d62728", "#2ca02c"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # here: importing matplotlib costs most of a second

    fig = Figure(figsize=(width, height), dpi=DPI)
    return fig, fig.add_subplot()


def as_data_uri(fig) -> str:
    """The figure as a PNG ``data:`` URI."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def ratio_distribution(ratios: np.ndarray) -> str:
    """Histogram of the adhesive ratio over the images, with its mean and median."""
    ratios = np.asarray(ratios, dtype=float)
    ratios = ratios[np.isfinite(ratios)]
    fig, ax = _figure(5.2, 3.5)
    ax.hist(ratios, bins=np.linspace(0, 1, 41), color=MODEL, alpha=0.85, edgecolor="white", linewidth=0.4)
    if ratios.size:
        ax.axvline(float(np.mean(ratios)), color="k", linestyle="--", linewidth=1, label=f"mean {np.mean(ratios):.3f}")
        ax.axvline(float(np.median(ratios)), color="0.4", linestyle=":", linewidth=1.2,
                   label=f"median {np.median(ratios):.3f}")
        ax.legend(fontsize=8, frameon=False)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, 1)
    ax.set_xlabel("adhesive ratio (share of the valid area)")
    ax.set_ylabel("images")
    ax.set_title(f"Adhesive ratio over {ratios.size} images", fontsize=10)
    return as_data_uri(fig)


def _positions(labels: list) -> dict:
    """x position of each label: its value where all are numbers, else its rank."""
    if labels and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels):
        return {v: float(v) for v in labels}
    return {v: float(i) for i, v in enumerate(labels)}


def ratio_against_label(labels: list, image_labels: list, ratios: np.ndarray, curve: dict | None,
                        x_title: str) -> str:
    """Each image's ratio against its label, the mean per label, and the model's hypothesis g(t) when known.

    The paper's Figure 10 (mean adhesive ratio per label against g).
    """
    pos = _positions(labels)
    ratios = np.asarray(ratios, dtype=float)
    x = np.array([pos.get(v, np.nan) for v in image_labels], dtype=float)
    rng = np.random.default_rng(0)  # the same jitter on every report of the same run
    fig, ax = _figure(5.2, 3.5)
    keep = np.isfinite(x) & np.isfinite(ratios)
    ax.scatter(x[keep] + rng.uniform(-0.18, 0.18, keep.sum()), ratios[keep], s=14, alpha=0.5, color=MODEL,
               linewidths=0, label="images")
    means = [(pos[v], ratios[keep & (x == pos[v])]) for v in labels]
    means = [(p, r.mean(), r.std()) for p, r in means if r.size]
    if means:
        px, mean, std = map(np.array, zip(*means))
        ax.errorbar(px, mean, yerr=std, fmt="o-", color="k", markersize=4, linewidth=1, capsize=2,
                    label="mean ± std per label")
    if curve is not None:
        gx = [pos[v] for v in curve["labels"] if v in pos]
        gy = [g for v, g in zip(curve["labels"], curve["g"]) if v in pos]
        name = curve.get("hypothesis") or "model card"
        ax.plot(gx, gy, color=CURVE, linewidth=2, label=f"g(t), {name}")
    ax.set_ylim(-0.02, 1.02)
    ticks = list(pos.values())
    step = max(1, len(ticks) // 16)
    ax.set_xticks(ticks[::step], [str(v) for v in list(pos)[::step]], fontsize=8)
    ax.set_xlabel(x_title)
    ax.set_ylabel("adhesive ratio")
    ax.set_title("Adhesive ratio against the label" + (" and g(t)" if curve else ""), fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="best")
    return as_data_uri(fig)


def confusion(scores: LabelScores, title: str) -> str:
    """The confusion matrix (rows: true label, columns: answer), counts written in the cells."""
    fig, ax = _figure(5.0, 4.4)
    m = scores.confusion
    image = ax.imshow(m, cmap="viridis")
    names = [str(v) for v in scores.labels]
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("answered label")
    ax.set_ylabel("true label")
    extra = f", ±1 {scores.within1:.2f}, MAE {scores.mae_t:.2f}" if scores.ordered else ""
    ax.set_title(f"{title}: top-1 {scores.top1:.2f}{extra}", fontsize=9)
    if len(names) <= 24:
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=6, color="w" if v < m.max() / 2 else "k")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return as_data_uri(fig)


def accuracy_per_label(model: LabelScores, expert: LabelScores | None = None) -> str:
    """Per true label, the share answered exactly and within ±1, for the model and (when given) the expert."""
    labels = model.labels
    fig, ax = _figure(7.2 if len(labels) > 8 else 5.2, 3.5)
    who = [("model", model, MODEL)] + ([("expert", expert, EXPERT)] if expert is not None else [])
    width = 0.8 / len(who)
    x = np.arange(len(labels))
    for k, (name, scores, colour) in enumerate(who):
        offset = (k - (len(who) - 1) / 2) * width
        exact = [scores.per_label_accuracy.get(v) for v in labels]
        ax.bar(x + offset, [np.nan if v is None else v for v in exact], width, color=colour, alpha=0.9,
               label=f"{name}, exact ({scores.top1:.2f})", zorder=3)
        if scores.ordered:
            near = scores.per_label_within1()
            ax.bar(x + offset, [np.nan if near.get(v) is None else near[v] for v in labels], width, color=colour,
                   alpha=0.3, label=f"{name}, within ±1 ({scores.within1:.2f})", zorder=2)  # behind the exact bar
    ax.set_xticks(x, [str(v) for v in labels], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("true label")
    ax.set_ylabel("share of images")
    ax.set_title("Accuracy per label: exact and within ±1", fontsize=10)
    ax.legend(fontsize=7, frameon=False, ncol=2, loc="lower left")
    return as_data_uri(fig)

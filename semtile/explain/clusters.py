"""Latent clusters of tiles (004, Visual-CCC): per-tile embeddings, k-means, cluster maps written beside the mask.

For each result of a store (read through :func:`semtile.open_results`), the
tiles are cut again from the normalised image the store keeps, on the grid
of the run that produced it (tile and halo from its provenance, or given),
and embedded on PyTorch (CPU or CUDA):

* ``classifier`` (default): the classifier's globally pooled features, the
  vector its linear head reads (``c`` numbers per tile);
* ``segmenter``: the segmenter's bottleneck (its deepest features, after the
  last max-pool of the descending path), averaged over positions.

The embeddings of all tiles of all results are standardised (each feature to
zero mean and unit variance) and clustered together with scikit-learn's
k-means, so cluster ``j`` means the same thing in every image. ``k`` is given
(``--clusters K``) or chosen by the mean silhouette score over a small range
(2 to 8 by default, scored on up to 4000 tiles), the highest winning: the
score compares each tile's distance to its own cluster with its distance to
the nearest other, needs no likelihood model, and is what the choice is
recorded as.

Written back: a cluster map per result (the tile's cluster on its core box;
core boxes tile the image exactly, so this is the tile-resolution map
upsampled nearest to pixels; integer values 0..k-1 stored as a float32 map
``clusters`` through :meth:`ResultStore.add_maps`, level 0 exact), and, in
the output folder, ``clusters.csv`` (per image: tiles and the share of each
cluster), ``montage.png`` (the tiles nearest each cluster's centre),
``clusters.json`` (k, how it was chosen, the silhouette scores) and, with
true masks, the agreement of tile clusters with true rough/smooth tiles (a
tile is rough when more than half of its core is rough in the true mask):
the adjusted Rand index.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semtile.engines import torch_device
from semtile.errors import ModelError, SemtileError
from semtile.explain.recorded import recorded_model
from semtile.inference.one_image import run_pass
from semtile.inference.passes import Pass, PassRunner, TileOutputs, register_pass
from semtile.inference.split import GridRule, TileGrid, read_windows
from semtile.logs import get_logger

__all__ = ["FEATURES", "MAP_NAME", "K_RANGE", "TileEmbedder", "embed_tiles", "choose_k", "cluster_features",
           "tile_truth", "tile_map", "ClusterReport", "cluster_store"]

log = get_logger("semtile.explain")

#: Which network's features embed a tile.
FEATURES = ("classifier", "segmenter")
#: The map written into each result.
MAP_NAME = "clusters"
#: The k tried when none is given (inclusive).
K_RANGE = (2, 8)
#: Tiles the silhouette score is computed on, at most (a random sample, seeded).
SILHOUETTE_SAMPLE = 4000


class TileEmbedder:
    """A batch of tiles ``(n, T, T)`` in [0, 1] -> embeddings ``(n, c)`` float32.

    ``network``: a :class:`~semtile.models.networks.Classifier` (its globally
    pooled features) or :class:`~semtile.models.networks.Segmenter` (its
    bottleneck, averaged over positions); put in eval mode here.
    """

    def __init__(self, network, device: str = "cpu"):
        import torch

        from semtile.models.networks import Classifier, Segmenter

        if not isinstance(network, (Classifier, Segmenter)):
            raise SemtileError(f"tile embeddings come from a classifier or a segmenter, not a {type(network).__name__}")
        self.kind = "classifier" if isinstance(network, Classifier) else "segmenter"
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.width = int(network.arch.c)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        import torch
        from torch.nn import functional as F

        from semtile.models.networks import INPUT_MEAN, INPUT_STD

        tiles = np.asarray(tiles, dtype=np.float32)
        if tiles.ndim != 3:
            raise SemtileError(f"tiles must be (n, T, T), got {tiles.shape}")
        net = self.network
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(tiles))[:, None].to(self.device)
            x = net.stem((x - INPUT_MEAN) / INPUT_STD)
            for stage in (net.stages if self.kind == "classifier" else net.down):
                x = F.max_pool2d(stage(x), 2)
            return x.mean(dim=(2, 3)).float().cpu().numpy()


class _EmbedderRunner(PassRunner):
    def __init__(self, embedder: TileEmbedder):
        self.embedder = embedder

    def run(self, tiles: np.ndarray) -> TileOutputs:
        return TileOutputs(vectors={"embedding": self.embedder(tiles)})

    def describe(self) -> dict:
        return {"name": f"torch-{self.embedder.device.type}", "precision": "f32"}


@register_pass
@dataclass(frozen=True)
class EmbeddingPass(Pass):
    """Per-tile embeddings (a network's pooled features), gathered in tile order: no maps."""

    kind = "embedding"

    rule: GridRule
    width: int
    device: str = "cpu"
    batch_size: int = 16
    network: Any = field(default=None, repr=False, compare=False)  # the loaded network (this process)

    def token(self):
        return (id(self.network), self.device)

    def build_runner(self) -> PassRunner:
        return _EmbedderRunner(TileEmbedder(self.network, self.device))

    def vector_widths(self) -> dict[str, int]:
        return {"embedding": self.width}


def embed_tiles(image, grid: TileGrid, embedder: TileEmbedder, batch_size: int = 16) -> np.ndarray:
    """Embeddings ``(len(grid), c)`` of the grid's tiles of ``image`` (2-D, sliceable: numpy or zarr), row-major."""
    p = EmbeddingPass(GridRule(grid.tile, grid.halo), embedder.width, str(embedder.device), batch_size,
                      network=embedder.network)
    return run_pass(image, p, runner=_EmbedderRunner(embedder))[1]["embedding"]


def _kmeans(x: np.ndarray, k: int, seed: int):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)


def choose_k(x: np.ndarray, k_range: tuple[int, int] = K_RANGE, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The k of highest mean silhouette score in ``k_range`` (inclusive) on standardised ``x``, and every score."""
    from sklearn.metrics import silhouette_score

    lo, hi = k_range
    n = len(x)
    hi = min(hi, n - 1)
    if lo < 2 or hi < lo:
        raise SemtileError(f"cannot choose k in {k_range} for {n} tiles: need at least {lo + 1} tiles and k >= 2")
    sample = min(n, SILHOUETTE_SAMPLE)
    scores = {}
    for k in range(lo, hi + 1):
        labels = _kmeans(x, k, seed).labels_
        if len(np.unique(labels)) < 2:
            scores[k] = float("-inf")
            continue
        scores[k] = float(silhouette_score(x, labels, sample_size=sample if sample < n else None, random_state=seed))
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


def cluster_features(features: np.ndarray, k: int | None = None, *, k_range: tuple[int, int] = K_RANGE,
                     seed: int = 0) -> dict:
    """Standardise, choose k (when None) by silhouette, run k-means; labels ordered by cluster size (0 largest)."""
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise SemtileError(f"clustering needs at least 2 tiles, got features of shape {features.shape}")
    x = StandardScaler().fit_transform(features)
    x = np.nan_to_num(x)  # a feature constant over all tiles: 0 after standardising
    scores: dict[int, float] = {}
    if k is None:
        k, scores = choose_k(x, k_range, seed)
        chosen_by = f"silhouette over k = {k_range[0]}..{min(k_range[1], len(x) - 1)}"
    else:
        if not 1 <= k <= len(x):
            raise SemtileError(f"--clusters {k}: must lie in 1..{len(x)} (the number of tiles)")
        chosen_by = "given"
    model = _kmeans(x, k, seed)
    # Relabel by size, largest first: the numbering is then stable across seeds and runs.
    sizes = np.bincount(model.labels_, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    labels = relabel[model.labels_]
    centres = model.cluster_centers_[order]
    distance = np.linalg.norm(x - centres[labels], axis=1)
    silhouette = scores.get(k)
    if silhouette is None and k >= 2 and len(np.unique(labels)) >= 2:
        from sklearn.metrics import silhouette_score

        n = len(x)
        silhouette = float(silhouette_score(x, labels, sample_size=min(n, SILHOUETTE_SAMPLE) if n > SILHOUETTE_SAMPLE
                                            else None, random_state=seed))
    return {"k": int(k), "labels": labels, "distance": distance, "chosen_by": chosen_by,
            "silhouette": silhouette, "silhouette_by_k": scores}


def tile_truth(truth: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Per tile (row-major): True when more than half of its core is foreground (rough) in the true mask."""
    out = np.empty(len(grid), dtype=bool)
    for i, (y0, x0, y1, x1) in enumerate(grid.core_boxes):
        out[i] = float(np.mean(truth[y0:y1, x0:x1])) > 0.5
    return out


def tile_map(labels: np.ndarray, grid: TileGrid, dtype=np.int16) -> np.ndarray:
    """The image-sized map of per-tile ``labels``: each tile's label on its core box (nearest upsampling)."""
    h, w = grid.shape
    core = grid.core
    small = np.asarray(labels).reshape(grid.n_rows, grid.n_cols).astype(dtype)
    return np.repeat(np.repeat(small, core, axis=0), core, axis=1)[:h, :w]


@dataclass
class ClusterReport:
    """What ``semtile clusters`` did."""

    k: int
    chosen_by: str
    features: str
    silhouette: float | None
    silhouette_by_k: dict
    tiles: int
    images: list[str]
    shares: dict = field(default_factory=dict)  # name -> [share of cluster j]
    ari: float | None = None  # adjusted Rand index against true rough/smooth tiles (with masks)
    truth_tiles: int = 0
    contingency: list | None = None  # rows: clusters, columns: smooth, rough tiles
    seconds: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _network_for(result, features: str, model: Path | None, cache: dict):
    """The classifier or segmenter that produced ``result`` (path and sha256 from its provenance), or ``model``."""
    from semtile.models.io import load_model

    recorded = ((result.provenance.get("model") or {}).get(features) or {})
    if model is not None:
        path = Path(model)
        path = path / f"{features}.pt" if path.is_dir() else path
    else:
        path = recorded_model(result, features)
    key = str(path)
    if key not in cache:
        cache[key] = load_model(path, features)
    loaded = cache[key]
    if model is None and recorded.get("sha256") and loaded.sha256 != recorded["sha256"]:
        raise ModelError(f"{path}: not the {features} that produced {result.name} (sha256 {loaded.sha256[:12]}..., "
                         f"the result's {recorded['sha256'][:12]}...); give the right one with --model")
    return loaded


def _grid_of(result, shape: tuple[int, int], tile: int | None, halo: int | None, multiple: int = 1) -> TileGrid:
    """The grid of the run that produced ``result`` (tile and halo from its provenance), or the one given."""
    params = result.provenance.get("parameters") or {}
    t = tile or (params.get("tile") if isinstance(params.get("tile"), int) else 256)
    h = halo if halo is not None else (params.get("halo") if tile is None and isinstance(params.get("halo"), int)
                                       else None)
    return GridRule.derive(int(t), h, multiple=multiple, what=f"{result.name}").grid((int(shape[0]), int(shape[1])))


def cluster_store(store: str | Path, out: str | Path, *, k: int | None = None, features: str = "classifier",
                  k_range: tuple[int, int] = K_RANGE, masks: str | Path | None = None, model: str | Path | None = None,
                  names: Sequence[str] | None = None, tile: int | None = None, halo: int | None = None,
                  batch_size: int = 16, threads: int | None = None, device: str = "auto", seed: int = 0,
                  examples: int = 8, write_maps: bool = True,
                  progress: Callable[[str], None] | None = None) -> ClusterReport:
    """Cluster the tiles of the results of ``store``; write maps into it and tables and figures into ``out``.

    ``masks``: a folder of true masks (named like the inputs, as ``evaluate
    --masks``): the adjusted Rand index of the tile clusters against the true
    rough/smooth tiles is then computed. One result that cannot be read is
    reported in ``errors`` and left out; the others go on.
    """
    import torch

    from semtile.explain.run import chosen_names
    from semtile.results import open_results
    from semtile.store import open_store

    if features not in FEATURES:
        raise SemtileError(f"--features {features!r}: choose from {', '.join(FEATURES)}")
    store, out = Path(store), Path(out)
    results = open_results(store)
    chosen = chosen_names(results, names, store, "cluster")
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch_device("auto")[0] if device == "auto" else device  # the registry's choice of torch device
    cache: dict = {}
    t0 = time.perf_counter()
    per_image: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for name in chosen:
        result = results[name]
        try:
            loaded = _network_for(result, features, Path(model) if model else None, cache)
            image = result.stored.image  # the normalised valid area, float32 in [0, 1], sliced lazily
            grid = _grid_of(result, image.shape[-2:], tile, halo, loaded.arch.multiple)
            emb = embed_tiles(image, grid, TileEmbedder(loaded.network, dev), batch_size)
            per_image[name] = {"grid": grid, "features": emb, "model": loaded}
            if progress:
                progress(f"{name}: {len(grid)} tiles embedded")
        except SemtileError as exc:
            errors[name] = str(exc)
            log.error("clusters_failed", result=name, error=str(exc))
    if not per_image:
        raise SemtileError(f"{store}: no result could be embedded: " + "; ".join(f"{n}: {e}" for n, e in errors.items()))
    embed_seconds = time.perf_counter() - t0
    done = list(per_image)
    feats = np.concatenate([per_image[n]["features"] for n in done])
    t1 = time.perf_counter()
    fit = cluster_features(feats, k, k_range=k_range, seed=seed)
    cluster_seconds = time.perf_counter() - t1
    k = fit["k"]
    labels, distance = fit["labels"], fit["distance"]
    bounds = np.cumsum([0] + [len(per_image[n]["grid"]) for n in done])
    report = ClusterReport(k=k, chosen_by=fit["chosen_by"], features=features, silhouette=fit["silhouette"],
                           silhouette_by_k={str(kk): v for kk, v in fit["silhouette_by_k"].items()},
                           tiles=int(len(feats)), images=done, errors=errors)
    # Truth, per tile.
    truth_tiles: list[np.ndarray | None] = [None] * len(done)
    if masks is not None:
        from semtile.explain.propose import find_truth_mask, read_truth_mask

        masks = Path(masks)
        if not masks.is_dir():
            raise SemtileError(f"{masks}: masks folder not found")
        for i, name in enumerate(done):
            path = find_truth_mask(masks, results[name].source)
            if path is not None:
                truth_tiles[i] = tile_truth(read_truth_mask(path, per_image[name]["grid"].shape), per_image[name]["grid"])
        have = [i for i, t in enumerate(truth_tiles) if t is not None]
        if have:
            from sklearn.metrics import adjusted_rand_score

            truth = np.concatenate([truth_tiles[i] for i in have])
            pred = np.concatenate([labels[bounds[i]:bounds[i + 1]] for i in have])
            report.ari = float(adjusted_rand_score(truth, pred))
            report.truth_tiles = int(len(truth))
            report.contingency = [[int(np.sum((pred == j) & ~truth)), int(np.sum((pred == j) & truth))]
                                  for j in range(k)]
    # Maps, shares.
    writer = open_store(store, mode="a") if write_maps else None
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(done):
        grid = per_image[name]["grid"]
        mine = labels[bounds[i]:bounds[i + 1]]
        cmap = tile_map(mine, grid)
        share = np.bincount(cmap.ravel(), minlength=k) / cmap.size  # by area (edge tiles' cores are smaller)
        report.shares[name] = [round(float(s), 6) for s in share]
        row = {"name": name, "path": str(results[name].source), "tiles": len(grid)}
        row.update({f"cluster_{j}": f"{s:.6f}" for j, s in enumerate(share)})
        if truth_tiles[i] is not None:
            row["rough_tiles"] = int(truth_tiles[i].sum())
        rows.append(row)
        if writer is not None:
            loaded = per_image[name]["model"]
            writer.add_maps(name, {MAP_NAME: cmap}, {
                "kind": "latent clusters", "k": k, "chosen_by": fit["chosen_by"], "features": features,
                "embedding": ("classifier's globally pooled features" if features == "classifier"
                              else "segmenter's bottleneck, averaged over positions"),
                "model_path": str(loaded.path), "model_sha256": loaded.sha256, "tile": grid.tile, "halo": grid.halo,
                "values": f"cluster index 0..{k - 1} per tile core (integers; level 0 exact)",
                "silhouette": fit["silhouette"], "seed": seed, "clustered_with": len(done)})
    fields = ["name", "path", "tiles", *[f"cluster_{j}" for j in range(k)]]
    if any("rough_tiles" in r for r in rows):
        fields.append("rough_tiles")
    with (out / "clusters.csv").open("w", newline="") as handle:
        writer_csv = csv.DictWriter(handle, fieldnames=fields)
        writer_csv.writeheader()
        writer_csv.writerows(rows)
    _montage(results, done, per_image, labels, distance, bounds, k, out / "montage.png", examples)
    report.seconds = {"embed": round(embed_seconds, 3), "cluster": round(cluster_seconds, 3),
                      "total": round(time.perf_counter() - t0, 3)}
    (out / "clusters.json").write_text(json.dumps(report.to_dict(), indent=2, default=float) + "\n")
    log.info("clusters", k=k, chosen_by=fit["chosen_by"], features=features, tiles=report.tiles, ari=report.ari,
             seconds=report.seconds)
    return report


def _montage(results, done, per_image, labels, distance, bounds, k: int, path: Path, examples: int) -> None:
    """One row per cluster: the tiles nearest its centre (whole windows as the network saw them, edges reflected;
    one per image while other images remain)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image_of = np.repeat(np.arange(len(done)), np.diff(bounds))
    fig, axes = plt.subplots(k, examples, figsize=(1.3 * examples, 1.4 * k), dpi=100, squeeze=False)
    for j in range(k):
        members = np.flatnonzero(labels == j)
        members = members[np.argsort(distance[members], kind="stable")]
        picked, seen = [], set()
        for m in members:  # the most typical tiles, spread over images first
            if image_of[m] not in seen:
                picked.append(m)
                seen.add(image_of[m])
            if len(picked) == examples:
                break
        for m in members:
            if len(picked) >= examples:
                break
            if m not in picked:
                picked.append(m)
        for c in range(examples):
            ax = axes[j][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(picked):
                ax.axis("off")
                continue
            m = picked[c]
            i = int(image_of[m])
            name = done[i]
            grid = per_image[name]["grid"]
            origin = grid.origins[m - bounds[i]: m - bounds[i] + 1]
            tile = read_windows(results[name].stored.image, origin, grid.tile)[0]  # what the network saw
            ax.imshow(tile, cmap="gray", vmin=0, vmax=1)
            ax.set_title(name[:16], fontsize=6)
            if c == 0:
                ax.set_ylabel(f"cluster {j}\n{int(np.sum(labels == j))} tiles", fontsize=7)
    fig.suptitle("latent clusters: the tiles nearest each cluster's centre", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

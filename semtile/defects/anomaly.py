"""Anomaly maps: an autoencoder's per-pixel map over patches and whole scans, pooled scores, thresholds.

A whole scan goes through the same tiled path as the mask
(:func:`semtile.inference.one_image.run_array`): overlapping tiles with a halo,
reflected at the edges, through the engine, blended by the merger with the
raised-cosine window. Blending is a partition of unity, so the map has no
seams (``tests/defects/test_anomaly_seams.py``).

The *anomaly fraction* of an image is the share of its pixels whose value is
above a threshold. :func:`calibrate_threshold` sets that threshold on normal
data for a chosen false-positive rate: the ``1 - fpr`` quantile of the
values of normal pixels (or of normal patches' scores).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from semtile.engines.base import DefectEngine
from semtile.engines.torch_cpu import TorchDefectEngine
from semtile.errors import SemtileError
from semtile.models.defect_networks import POOLINGS
from semtile.models.io import LoadedModel

__all__ = ["anomaly_map", "calibrate_threshold", "calibrate_model", "patch_maps", "pool_maps", "as_engine"]


def as_engine(model_or_engine: LoadedModel | DefectEngine, expect_anomaly: bool = True) -> DefectEngine:
    """A :class:`DefectEngine` for a loaded model (PyTorch) or the engine itself."""
    if isinstance(model_or_engine, DefectEngine):
        engine = model_or_engine
    elif isinstance(model_or_engine, LoadedModel):
        engine = TorchDefectEngine(model_or_engine)
    else:
        raise SemtileError(f"expected a defect model or engine, got {type(model_or_engine).__name__}")
    if expect_anomaly and not engine.model.arch.is_anomaly:
        raise SemtileError(f"{engine.model.path}: a {engine.model.arch.kind} gives no anomaly map; "
                           "train one with `semtile train autoencoder`")
    if not expect_anomaly and engine.model.arch.is_anomaly:
        raise SemtileError(f"{engine.model.path}: an {engine.model.arch.kind} is not a patch classifier")
    return engine


def _check_image(image):
    """A 2-D float array-like; a numpy or Zarr array is used as it is (tiles are read from it window by window)."""
    a = image if hasattr(image, "shape") and hasattr(image, "dtype") else np.asarray(image)
    shape = tuple(a.shape)
    if len(shape) != 2 or min(shape) < 1:
        raise SemtileError(f"anomaly map: the image must be a non-empty 2-D array, got shape {shape}")
    if not np.issubdtype(np.dtype(a.dtype), np.floating):
        raise SemtileError(f"anomaly map: the image must be float gray in [0, 1], got {a.dtype}")
    return a


def anomaly_map(image, model_or_engine: LoadedModel | DefectEngine, *, tile: int | None = None,
                halo: int | None = None, batch_size: int = 8,
                threshold: float | None = None) -> tuple[np.ndarray, float | None]:
    """The anomaly map of a whole image and its anomaly fraction.

    Parameters
    ----------
    image : 2-D float gray in [0, 1] (numpy, or any array :func:`read_windows` reads: a Zarr array...).
    model_or_engine : a loaded autoencoder/VAE (run by PyTorch) or a :class:`DefectEngine`.
    tile, halo : the tile grid; default the engine's tile, else the card's, and the halo rule ``tile // 8``
        (moved to a multiple of half the network's stride: :meth:`~semtile.inference.split.GridRule.derive`).
    batch_size : tiles per engine call.
    threshold : pixel threshold for the fraction; default the one calibrated in the model's card.

    Returns
    -------
    map : float32 (rows, cols), blended over overlapping tiles.
    fraction : share of pixels above the threshold, or None when there is no threshold.
    """
    from semtile.inference.one_image import run_array
    from semtile.inference.split import GridRule

    engine = as_engine(model_or_engine)
    image = _check_image(image)
    tile = int(tile or engine.tile or engine.model.tile)
    if engine.tile is not None and tile != engine.tile:
        raise SemtileError(f"anomaly map: the {engine.name} engine runs {engine.tile}-pixel tiles, not {tile}")
    rule = GridRule.derive(tile, halo if halo is not None else (engine.model.halo if tile == engine.model.tile
                                                                 else None),
                           multiple=engine.model.arch.multiple, aligned=True, what=f"anomaly map ({engine.model.path})")
    try:
        grid = rule.grid(tuple(image.shape))
    except (TypeError, ValueError) as exc:
        raise SemtileError(f"anomaly map: {exc}") from exc
    merged = run_array(image, grid, lambda tiles: {"anomaly": engine.run(tiles)}, batch_size=batch_size)
    result = merged["anomaly"]
    threshold = engine.model.threshold if threshold is None else float(threshold)
    fraction = None if threshold is None else float(np.mean(result > threshold))
    return result, fraction


def patch_maps(patches: np.ndarray, model_or_engine: LoadedModel | DefectEngine, batch_size: int = 256) -> np.ndarray:
    """Anomaly maps (n, T, T) of whole patches (n, T, T), each in one pass (no tiling)."""
    engine = as_engine(model_or_engine)
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 3:
        raise SemtileError(f"patch maps: patches must be (n, T, T), got {patches.shape}")
    return np.concatenate([engine.run(patches[i: i + batch_size]) for i in range(0, len(patches), batch_size)]) \
        if len(patches) else np.zeros_like(patches)


def pool_maps(maps: np.ndarray, how: str = "max") -> np.ndarray:
    """One score per patch from its map: ``max`` (the most anomalous spot) or ``mean``."""
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise SemtileError(f"pooling: maps must be (n, T, T), got {maps.shape}")
    if how not in POOLINGS:
        raise SemtileError(f"pooling must be one of {', '.join(POOLINGS)}, got {how!r}")
    return maps.max(axis=(1, 2)) if how == "max" else maps.mean(axis=(1, 2))


def calibrate_threshold(normal: np.ndarray | Iterable[np.ndarray], fpr: float) -> float:
    """The threshold above which a share ``fpr`` of normal values lie.

    ``normal``: anomaly maps of normal scans (a list of 2-D maps or one array)
    for a pixel threshold, or the scores of normal patches for a patch
    threshold. Returns the ``1 - fpr`` quantile (the higher neighbour, so at
    most ``fpr`` of the values are above it).
    """
    if not 0 < fpr < 1:
        raise SemtileError(f"threshold calibration: the false-positive rate must lie in (0, 1), got {fpr}")
    if isinstance(normal, np.ndarray):
        values = normal.ravel()
    else:
        parts = [np.asarray(v, dtype=np.float64).ravel() for v in normal]
        values = np.concatenate(parts) if parts else np.array([])
    if values.size == 0:
        raise SemtileError("threshold calibration: no normal values given")
    if not np.isfinite(values).all():
        raise SemtileError("threshold calibration: the normal values must be finite")
    return float(np.quantile(values.astype(np.float64), 1.0 - fpr, method="higher"))


def calibrate_model(model_path, normal_images: Iterable[np.ndarray], fpr: float, *,
                    engine: DefectEngine | None = None, note: str = "") -> dict:
    """Calibrate a saved autoencoder's pixel threshold on normal scans and write it into its card.

    ``normal_images``: 2-D float images in [0, 1] known to be free of defects
    (e.g. read with :func:`semtile.io.tiff.open_scan`). Their whole-scan maps
    (the tiled path, as ``process`` makes them) give the ``1 - fpr`` quantile.
    The weights and their sha256 are unchanged; the card's ``threshold``
    records the value, the rate, how many images and ``note``. Returns it.
    """
    from semtile.models.io import load_model, update_card
    from semtile.models.kinds import ANOMALY_KINDS

    model = load_model(model_path, expect=ANOMALY_KINDS)
    runner = engine if engine is not None else TorchDefectEngine(model)
    maps = [anomaly_map(image, runner)[0] for image in normal_images]
    if not maps:
        raise SemtileError(f"{model_path}: no normal images to calibrate the threshold on")
    threshold = {"value": calibrate_threshold(maps, fpr), "fpr": fpr, "on": "pixels", "images": len(maps),
                 "split": "given normal scans", "note": note}
    update_card(model.path, threshold=threshold)
    return threshold

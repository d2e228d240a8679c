"""Conformance of the fast engines with PyTorch for a defect model: same patch scores, same AUC.

Each engine of the registry runs the model's exported graph on the same
patches (:func:`semtile.engines.conformance.compare_engines`); the patch
scores (a classifier's probability, an autoencoder's map pooled as its card
says) are compared with PyTorch fp32: the largest absolute difference of the
outputs, relative to the largest PyTorch output, and, given labels, the
AUC-ROC of each engine and its difference from PyTorch's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from semtile.defects.anomaly import pool_maps
from semtile.defects.scores import patch_scores
from semtile.engines.base import DefectEngine
from semtile.engines.conformance import CHECKS, compare_engines
from semtile.errors import SemtileError
from semtile.models.io import LoadedModel

__all__ = ["engine_patch_scores", "engine_conformance"]


def _scores(model: LoadedModel, raw: np.ndarray) -> np.ndarray:
    return (pool_maps(raw, model.arch.pool) if model.arch.is_anomaly else raw).astype(np.float64)


def engine_patch_scores(engine: DefectEngine, patches: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The engine's raw outputs for ``patches`` (maps or probabilities) and one score per patch."""
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 3 or len(patches) == 0:
        raise SemtileError(f"conformance: patches must be a non-empty (n, T, T) array, got {patches.shape}")
    raw = np.concatenate([engine.run(patches[i: i + batch_size]) for i in range(0, len(patches), batch_size)])
    return raw, _scores(engine.model, raw)


def engine_conformance(model: LoadedModel, patches: np.ndarray, labels: Sequence[int] | None = None, *,
                       engines: Sequence[tuple[str, str]] = CHECKS, batch_size: int = 256,
                       threads: int | None = None) -> dict:
    """Every (engine, precision) against PyTorch fp32 on ``patches``; an engine that cannot run says why.

    Returns ``{"torch-cpu": {...}, "onnxruntime f32": {...}, ...}`` with
    ``auroc``/``ap`` (given labels), ``auroc_difference`` (engine - PyTorch),
    ``max_abs_difference`` and ``max_rel_difference`` of the raw outputs, the
    precision actually run, or ``error``.
    """
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 3 or len(patches) == 0:
        raise SemtileError(f"conformance: patches must be a non-empty (n, T, T) array, got {patches.shape}")
    report, outputs = compare_engines(model, patches, engines=engines, batch_size=batch_size, threads=threads)
    if labels is not None:
        for key, entry in report.items():
            if key not in outputs:
                continue
            (raw,) = outputs[key].values()
            entry.update(patch_scores(labels, _scores(model, raw), f"conformance, {key}"))
            if key != "torch-cpu":
                entry["auroc_difference"] = entry["auroc"] - report["torch-cpu"]["auroc"]
    return report

"""Conformance of the fast engines with PyTorch for a defect model: same patch scores, same AUC.

Each engine runs the model's exported graph on the same patches; the patch
scores (a classifier's probability, an autoencoder's map pooled as its card
says) are compared with PyTorch fp32: the largest absolute difference of the
outputs, relative to the largest PyTorch output, and, given labels, the
AUC-ROC of each engine and its difference from PyTorch's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from semtile.defects.anomaly import pool_maps
from semtile.defects.engines import DefectEngine, create_defect_engine
from semtile.defects.scores import patch_scores
from semtile.errors import SemtileError
from semtile.models.io import LoadedModel

__all__ = ["engine_patch_scores", "engine_conformance"]


def engine_patch_scores(engine: DefectEngine, patches: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The engine's raw outputs for ``patches`` (maps or probabilities) and one score per patch."""
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 3 or len(patches) == 0:
        raise SemtileError(f"conformance: patches must be a non-empty (n, T, T) array, got {patches.shape}")
    raw = np.concatenate([engine.run(patches[i: i + batch_size]) for i in range(0, len(patches), batch_size)])
    scores = pool_maps(raw, engine.model.arch.pool) if engine.model.arch.is_anomaly else raw
    return raw, scores.astype(np.float64)


def engine_conformance(model: LoadedModel, patches: np.ndarray, labels: Sequence[int] | None = None, *,
                       engines: Sequence[tuple[str, str]] = (("onnxruntime", "f32"), ("openvino", "f32"),
                                                             ("openvino", "auto")),
                       batch_size: int = 256, threads: int | None = None) -> dict:
    """Every (engine, precision) against PyTorch fp32 on ``patches``; an engine that cannot run says why.

    Returns ``{"torch-cpu": {...}, "onnxruntime f32": {...}, ...}`` with
    ``auroc``/``ap`` (given labels), ``auroc_difference`` (engine - PyTorch),
    ``max_abs_difference`` and ``max_rel_difference`` of the raw outputs, the
    precision actually run, or ``error``.
    """
    tile = int(np.asarray(patches).shape[-1])
    reference = create_defect_engine(model, "torch-cpu", threads=threads)
    ref_raw, ref_scores = engine_patch_scores(reference, patches, batch_size)
    scale = max(float(np.abs(ref_raw).max()), 1e-12)
    report: dict = {"torch-cpu": {"precision": "f32"}}
    if labels is not None:
        report["torch-cpu"].update(patch_scores(labels, ref_scores, "conformance, torch-cpu"))
    for name, precision in engines:
        key = f"{name} {precision}"
        try:
            engine = create_defect_engine(model, name, tile=tile, precision=precision, threads=threads)
            raw, scores = engine_patch_scores(engine, patches, batch_size)
        except (SemtileError, ImportError, RuntimeError) as exc:
            report[key] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        diff = float(np.abs(raw - ref_raw).max())
        entry = {"precision": engine.precision, "max_abs_difference": diff, "max_rel_difference": diff / scale}
        if labels is not None:
            entry.update(patch_scores(labels, scores, f"conformance, {key}"))
            entry["auroc_difference"] = entry["auroc"] - report["torch-cpu"]["auroc"]
        report[key] = entry
    return report

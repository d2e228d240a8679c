"""Conformance of the fast engines with PyTorch fp32 on one model of any kind: the largest differences of the outputs.

Every (engine, precision) checked runs the same tiles as the reference,
torch-cpu at f32, and its outputs are compared with the reference's: for a
bundle the classifier's logits and the segmenter's probabilities, for a
defect model its one output (the anomaly map or the defect probability). The
record, one format for every kind (``conformance.json`` of an export,
:func:`semtile.models.export.export_model`)::

    {"torch-cpu": {"precision": "f32"},
     "onnxruntime f32": {"precision": "f32", "max_abs_difference": ..., "max_rel_difference": ...,
                         "outputs": {"mask_probs": {"max_abs_difference": ..., "max_rel_difference": ...}, ...}},
     "openvino auto": {"error": "SemtileError: ..."}, ...}

``max_rel_difference`` is relative to the largest reference output; the top
level holds the largest over the outputs. An engine that cannot run here says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semtile.engines.base import EngineOutput
from semtile.engines.registry import EngineSettings, create_engine, engine_kind
from semtile.errors import SemtileError
from semtile.models.kinds import BUNDLE, OUTPUTS

__all__ = ["CHECKS", "CONFORMANCE_TILES", "engine_outputs", "compare_engines", "write_conformance"]

#: Tiles an export's conformance record is measured on.
CONFORMANCE_TILES = 16

#: What is compared with PyTorch by default: the CPU engines that run exports.
CHECKS = (("onnxruntime", "f32"), ("openvino", "f32"), ("openvino", "auto"))


def engine_outputs(engine, tiles: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """An engine's outputs for ``tiles`` (n, T, T), by output name, float32 on the host."""
    tiles = np.asarray(tiles, dtype=np.float32)
    if tiles.ndim != 3 or len(tiles) == 0:
        raise SemtileError(f"conformance: tiles must be a non-empty (n, T, T) array, got {tiles.shape}")
    chunks = [engine.run(tiles[i: i + batch_size]) for i in range(0, len(tiles), batch_size)]
    if isinstance(chunks[0], EngineOutput):
        return {"class_logits": np.concatenate([np.asarray(c.class_logits, np.float32) for c in chunks]),
                "mask_probs": np.concatenate([np.asarray(c.mask_probs, np.float32) for c in chunks])}
    return {OUTPUTS[engine.model.arch.kind]: np.concatenate(chunks)}


def _differences(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict:
    outputs = {}
    for name, expected in ref.items():
        diff = float(np.abs(got[name] - expected).max())
        outputs[name] = {"max_abs_difference": diff,
                         "max_rel_difference": diff / max(float(np.abs(expected).max()), 1e-12)}
    return {"max_abs_difference": max(o["max_abs_difference"] for o in outputs.values()),
            "max_rel_difference": max(o["max_rel_difference"] for o in outputs.values()), "outputs": outputs}


def compare_engines(model, tiles: np.ndarray, *, engines: Sequence[tuple[str, str]] = CHECKS,
                    batch_size: int = 16, threads: int | None = None) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Every (engine, precision) against torch-cpu f32 on ``tiles``; an engine that cannot run says why.

    ``model`` is a bundle or one loaded defect model. Returns the record
    (module docstring) and the outputs of every engine that ran, by the
    record's key (``"torch-cpu"``, ``"onnxruntime f32"``...), for scores of one's own.
    """
    tiles = np.ascontiguousarray(tiles, dtype=np.float32)
    if tiles.ndim != 3:
        raise SemtileError(f"conformance: tiles must be a non-empty (n, T, T) array, got {tiles.shape}")
    tile = int(tiles.shape[-1])
    kind = engine_kind(model)

    def settings(precision: str) -> EngineSettings:
        return EngineSettings(tile=tile, precision=precision, threads=threads, batch_size=batch_size)

    reference, _ = create_engine("torch-cpu", model, settings("f32"))
    outputs = {"torch-cpu": engine_outputs(reference, tiles, batch_size)}
    report: dict = {"torch-cpu": {"precision": "f32"}}
    for name, precision in engines:
        key = f"{name} {precision}"
        try:
            engine, _ = create_engine(name, model, settings(precision),
                                      calibration_tiles=tiles if kind == BUNDLE else None)
            outputs[key] = engine_outputs(engine, tiles, batch_size)
        except (SemtileError, ImportError, RuntimeError) as exc:
            report[key] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        report[key] = {"precision": engine.precision, **_differences(outputs[key], outputs["torch-cpu"])}
    return report, outputs


def write_conformance(model, folder: str | Path, tile: int, *, reuse: bool = False, tiles: int = CONFORMANCE_TILES,
                      seed: int = 0) -> dict:
    """Every fast engine against PyTorch fp32 on ``tiles`` smooth random tiles, written to ``folder/conformance.json``."""
    from scipy.ndimage import gaussian_filter

    from semtile.models.export import CONFORMANCE, CONFORMANCE_FORMAT, model_kind, model_name, weights_sha256

    folder = Path(folder)
    path = folder / CONFORMANCE
    if reuse and path.is_file():
        with contextlib.suppress(ValueError, OSError):
            found = json.loads(path.read_text())
            if (found.get("format"), found.get("weights_sha256"), found.get("tile"), found.get("tiles"),
                    found.get("seed")) == (CONFORMANCE_FORMAT, weights_sha256(model), tile, tiles, seed):
                return found
    rng = np.random.default_rng(seed)
    patches = np.stack([gaussian_filter(rng.random((tile, tile), dtype=np.float32), s)
                        for s in np.linspace(0.5, 4.0, tiles)])
    patches = (patches - patches.min(axis=(1, 2), keepdims=True)) / \
        (np.ptp(patches, axis=(1, 2), keepdims=True) + 1e-6)
    engines, _ = compare_engines(model, patches.astype(np.float32))
    record = {"format": CONFORMANCE_FORMAT, "model": model_name(model), "kind": model_kind(model),
              "weights_sha256": weights_sha256(model), "tile": tile, "tiles": tiles, "seed": seed, "engines": engines}
    staging = path.with_name(f".{CONFORMANCE}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.write_text(json.dumps(record, indent=2, default=str) + "\n")
    staging.replace(path)  # atomic: a reader sees the old record or the new one
    return record

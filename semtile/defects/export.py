"""ONNX exports of defect models for the fast CPU engines (ONNX Runtime, OpenVINO).

An export folder holds ``model.onnx`` and ``export.json`` (kind, tile, opset,
input and output, the sha256 of the weights it came from and of the ONNX
file). The exported graph is what the engines run: the classifier's defect
probability ``(batch,)`` or the autoencoder's anomaly map ``(batch, 1, T, T)``
(normalisation, smoothing and a VAE's latent term inside). Each export is
checked with ``onnx.checker`` and against PyTorch at another batch size.
Exports are cached under ``$SEMTILE_CACHE/defects`` by weight sha256 and tile,
staged in a folder of their own and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch

from semtile.errors import ModelError
from semtile.io.discover import sha256_file
from semtile.models.export import OPSET, cache_root, read_manifest
from semtile.models.io import LoadedModel, load_model
from semtile.models.kinds import DEFECT_KINDS
from semtile.models.networks import inference_module

__all__ = ["export_defect_model", "exported_defect_model", "export_defect_model_checked", "read_export_manifest",
           "ONNX_NAME"]

ONNX_NAME = "model.onnx"
MANIFEST = "export.json"


def _output_name(model: LoadedModel) -> str:
    return "anomaly_map" if model.arch.is_anomaly else "defect_probability"


def export_defect_model(model: LoadedModel, out: str | Path, *, tile: int | None = None) -> Path:
    """Write ``model.onnx`` and ``export.json`` for ``model`` at ``tile`` (default: the card's tile) into ``out``."""
    import onnx
    import onnxruntime as ort

    tile = int(tile or model.tile)
    if tile < 1 or tile % model.arch.multiple:
        raise ModelError(f"{model.path}: tile {tile} must be a positive multiple of {model.arch.multiple}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    module = inference_module(model.network)
    output = _output_name(model)
    example = torch.rand(2, 1, tile, tile, generator=torch.Generator().manual_seed(0))
    path = out / ONNX_NAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (example,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["tiles"], output_names=[output],
                          dynamic_axes={"tiles": {0: "batch"}, output: {0: "batch"}})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    check = torch.rand(3, 1, tile, tile, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = module(check).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"tiles": check.numpy()})[0]
    scale = max(1.0, float(np.abs(expected).max()))
    if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4 * scale, rtol=1e-3):
        raise ModelError(f"{path}: ONNX export differs from PyTorch (max {np.abs(got - expected).max():.3g})")
    manifest = {
        "format": "semtile-defect-export/1", "kind": model.arch.kind, "opset": OPSET, "tile": tile,
        "architecture": model.arch.to_dict(),
        "inputs": {"tiles": ["batch", 1, tile, tile], "range": [0.0, 1.0]},
        "outputs": {output: ["batch", 1, tile, tile] if model.arch.is_anomaly else ["batch"]},
        "weights_sha256": model.sha256, "sha256": {ONNX_NAME: sha256_file(path)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def export_defect_model_checked(path: str | Path, out: str | Path, *, tile: int | None = None,
                                tiles: int = 16, seed: int = 0) -> tuple[Path, dict]:
    """``semtile export MODEL.pt``: the ONNX export into ``out`` and its conformance with PyTorch.

    Every fast engine (ONNX Runtime f32, OpenVINO f32 and its default
    precision) runs ``tiles`` smooth random tiles through the export; the
    largest differences from PyTorch fp32 go to ``out/conformance.json``
    (an engine that cannot run here says why). Returns the folder and that report.
    """
    from scipy.ndimage import gaussian_filter

    from semtile.defects.conformance import engine_conformance

    model = load_model(path, expect=DEFECT_KINDS)
    tile = int(tile or model.tile)
    out = Path(out)
    export_defect_model(model, out, tile=tile)
    rng = np.random.default_rng(seed)
    patches = np.stack([gaussian_filter(rng.random((tile, tile), dtype=np.float32), s)
                        for s in np.linspace(0.5, 4.0, tiles)])
    patches = (patches - patches.min(axis=(1, 2), keepdims=True)) / \
        (np.ptp(patches, axis=(1, 2), keepdims=True) + 1e-6)
    engines = engine_conformance(model, patches.astype(np.float32))
    report = {"model": str(path), "kind": model.arch.kind, "weights_sha256": model.sha256, "tile": tile,
              "tiles": tiles, "engines": engines}
    (out / "conformance.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return out, report


def read_export_manifest(folder: str | Path, *, verify: bool = True) -> dict:
    """Read ``export.json`` and (by default) check the ONNX file's sha256."""
    return read_manifest(folder, MANIFEST, "not a defect model export", verify=verify)


def _verified(folder: Path, sha: str, tile: int) -> bool:
    try:
        manifest = read_export_manifest(folder)
    except (ModelError, KeyError, ValueError, OSError):
        return False
    return manifest.get("weights_sha256") == sha and int(manifest.get("tile", -1)) == tile


def exported_defect_model(model: LoadedModel, *, tile: int | None = None) -> Path:
    """The ONNX export of ``model`` at ``tile``, made once and cached by weight sha256."""
    tile = int(tile or model.tile)
    key = f"{model.sha256[:16]}-t{tile}-opset{OPSET}"
    folder = cache_root() / "defects" / key
    if _verified(folder, model.sha256, tile):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f"{key}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        export_defect_model(model, staging, tile=tile)
        try:
            staging.rename(folder)  # atomic; fails if the entry exists
        except OSError:
            if _verified(folder, model.sha256, tile):  # another process made it meanwhile
                return folder
            old = folder.with_name(f"{key}.stale-{uuid.uuid4().hex[:8]}")
            folder.rename(old)  # a broken entry: set it aside, then take its place
            staging.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder

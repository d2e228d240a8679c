"""ONNX exports of every model kind for the fast engines, cached, each with its conformance record.

One function, :func:`export_model`, for a bundle (classifier + segmenter) or
one defect model (patch classifier, autoencoder, VAE):

* ``export_model(model, tile=...)``: the export engines run, made once per
  weights and tile and cached under ``$SEMTILE_CACHE/exports/KEY`` (KEY: the
  kind, the weights' sha256, the tile, the opset);
* ``export_model(model, out, tile=...)``: the same files written into ``out``
  (``semtile export``).

Each ONNX file (opset pinned, dynamic batch axis, input ``tiles`` of shape
(batch, 1, T, T) in [0, 1]) is the kind's inference graph
(:func:`semtile.models.networks.inference_module`), checked with
``onnx.checker`` and against PyTorch at another batch size. A bundle's folder
holds ``classifier.onnx``/``segmenter.onnx``, the weights with their cards
and ``bundle.json`` (architecture, labels, hypothesis, tile, halo, every
file's sha256); a defect model's holds ``model.onnx`` and ``export.json``
(kind, tile, the weights' sha256 and the ONNX file's).

With ``conformance=True`` the folder also gets ``conformance.json``
(:data:`CONFORMANCE_FORMAT`, one format for every kind): every fast engine
run on smooth random tiles against PyTorch fp32
(:func:`semtile.engines.conformance.compare_engines`).
"""

from __future__ import annotations

import contextlib
import glob
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
from semtile.kernels.window import default_halo
from semtile.models.io import LoadedModel, ModelBundle, card_path
from semtile.models.kinds import BUNDLE, DEFECT_KINDS, OUTPUTS
from semtile.models.networks import inference_module

__all__ = ["OPSET", "ONNX_NAME", "BUNDLE_MANIFEST", "MANIFEST", "CONFORMANCE", "CONFORMANCE_FORMAT", "export_model",
           "read_export_manifest", "read_conformance", "cache_root", "model_kind", "model_name", "weights_sha256",
           "export_tile"]

OPSET = 17
ONNX_NAME = "model.onnx"  # one defect model
BUNDLE_MANIFEST = "bundle.json"
MANIFEST = "export.json"  # one defect model
CONFORMANCE = "conformance.json"
CONFORMANCE_FORMAT = "semtile-conformance/1"


def model_kind(model) -> str:
    """``bundle`` for a :class:`ModelBundle`, the kind of a loaded defect model; ModelError otherwise."""
    if isinstance(model, ModelBundle):
        return BUNDLE
    if isinstance(model, LoadedModel) and model.arch.kind in DEFECT_KINDS:
        return model.arch.kind
    if isinstance(model, LoadedModel):
        raise ModelError(f"{model.path}: a {model.arch.kind} runs in a bundle with its "
                         f"{'segmenter' if model.arch.kind == 'classifier' else 'classifier'}: give the bundle")
    raise ModelError(f"expected a model bundle or a loaded defect model, got {type(model).__name__}")


def model_name(model) -> str:
    return (model.source or "bundle") if isinstance(model, ModelBundle) else str(model.path)


def _multiple(model) -> int:
    return model.multiple if isinstance(model, ModelBundle) else model.arch.multiple


def weights_sha256(model) -> dict[str, str]:
    """The sha256 of the weights of every network, by the name of its ONNX file's stem."""
    if isinstance(model, ModelBundle):
        return {"classifier": model.classifier.sha256, "segmenter": model.segmenter.sha256}
    return {"model": model.sha256}


def export_tile(model, tile: int | None) -> int:
    """The tile an export of ``model`` is made at: ``tile``, else 256 for a bundle and the card's for a defect model."""
    tile = int(tile or (256 if isinstance(model, ModelBundle) else model.tile))
    if tile < 1 or tile % _multiple(model):
        raise ModelError(f"{model_name(model)}: tile {tile} must be a multiple of {_multiple(model)}")
    return tile


def _graphs(model) -> list[tuple[str, torch.nn.Module, str]]:
    """(ONNX file, inference graph, output name) of every network of ``model``."""
    if isinstance(model, ModelBundle):
        return [(f"{m.arch.kind}.onnx", inference_module(m.network), OUTPUTS[m.arch.kind])
                for m in (model.classifier, model.segmenter)]
    return [(ONNX_NAME, inference_module(model.network), OUTPUTS[model.arch.kind])]


def _export_one(module: torch.nn.Module, path: Path, tile: int, output: str) -> None:
    import onnx
    import onnxruntime as ort

    module = module.eval()
    example = torch.rand(2, 1, tile, tile, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which needs
        # onnxscript; for these plain convolutional nets it is exact and checked below.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), opset_version=OPSET, dynamo=False,
            input_names=["tiles"], output_names=[output],
            dynamic_axes={"tiles": {0: "batch"}, output: {0: "batch"}},
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    # The export must compute what PyTorch computes, at another batch size too.
    check = torch.rand(3, 1, tile, tile, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = module(check).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"tiles": check.numpy()})[0]
    scale = max(1.0, float(np.abs(expected).max()))
    if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4 * scale, rtol=1e-3):
        raise ModelError(f"{path}: ONNX export differs from PyTorch (max {np.abs(got - expected).max():.3g})")


def _write(model, out: Path, tile: int, halo: int | None) -> Path:
    """Write the ONNX files and the manifest of ``model`` at ``tile`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, ModelBundle):
        for name, part in (("classifier", model.classifier), ("segmenter", model.segmenter)):
            if part.path.resolve() != (out / f"{name}.pt").resolve():
                shutil.copyfile(part.path, out / f"{name}.pt")
                card = dict(part.card, weights=f"{name}.pt")
                card_path(out / f"{name}.pt").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    graphs = _graphs(model)
    for file, module, output in graphs:
        _export_one(module, out / file, tile, output)
    inputs = {"tiles": ["batch", 1, tile, tile], "range": [0.0, 1.0]}
    if isinstance(model, ModelBundle):
        files = ["classifier.pt", "classifier.json", "segmenter.pt", "segmenter.json", "classifier.onnx",
                 "segmenter.onnx"]
        manifest = {
            "format": "semtile-bundle/1", "opset": OPSET, "tile": tile,
            "halo": default_halo(tile) if halo is None else halo,
            "labels": model.labels, "hypothesis": model.segmenter.card.get("training", {}).get("hypothesis"),
            "architecture": {"classifier": model.classifier.arch.to_dict(), "segmenter": model.segmenter.arch.to_dict()},
            "inputs": inputs,
            "outputs": {"classifier.onnx": "class_logits (batch, n_labels)",
                        "segmenter.onnx": "mask_probs (batch, 1, T, T)"},
            "sha256": {name: sha256_file(out / name) for name in files},
        }
        (out / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    else:
        output = graphs[0][2]
        manifest = {
            "format": "semtile-defect-export/1", "kind": model.arch.kind, "opset": OPSET, "tile": tile,
            "architecture": model.arch.to_dict(), "inputs": inputs,
            "outputs": {output: ["batch", 1, tile, tile] if model.arch.is_anomaly else ["batch"]},
            "weights_sha256": model.sha256, "sha256": {ONNX_NAME: sha256_file(out / ONNX_NAME)},
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def export_model(model: ModelBundle | LoadedModel, out: str | Path | None = None, *, tile: int | None = None,
                 halo: int | None = None) -> Path:
    """The ONNX export of ``model`` (a bundle or a loaded defect model) at ``tile``; return its folder.

    ``tile`` defaults to 256 for a bundle, to the card's tile for a defect
    model; ``halo`` is recorded in a bundle's manifest (default tile / 8).
    Without ``out`` the export is the cached one (made once, see
    :func:`_cached`); with ``out`` it is written there. Its conformance record
    (``conformance.json``) is :func:`semtile.engines.conformance.write_conformance`'s.
    """
    model_kind(model)
    tile = export_tile(model, tile)
    if out is None:
        folder = _cached(model, tile, halo)
    else:
        folder = _write(model, Path(out), tile, halo)
    return folder


def read_export_manifest(folder: str | Path, *, verify: bool = True, kind: str | None = None) -> dict:
    """Read an export folder's manifest (``bundle.json`` or ``export.json``); by default check every file's sha256.

    ``kind="bundle"``: the folder must be a bundle's export.
    """
    folder = Path(folder)
    bundle = folder / BUNDLE_MANIFEST
    path = bundle if kind == BUNDLE or bundle.is_file() else folder / MANIFEST
    if not path.is_file():
        what = BUNDLE_MANIFEST if kind == BUNDLE else f"{BUNDLE_MANIFEST} or {MANIFEST}"
        raise ModelError(f"{folder}: no {what}; run `semtile export` first")
    manifest = json.loads(path.read_text())
    if verify:
        for name, digest in manifest["sha256"].items():
            if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                raise ModelError(f"{folder / name}: missing or changed since export (sha256 mismatch)")
    return manifest


def read_conformance(folder: str | Path) -> dict:
    """The conformance record of an export folder (``conformance.json``)."""
    path = Path(folder) / CONFORMANCE
    if not path.is_file():
        raise ModelError(f"{folder}: no {CONFORMANCE}; export with conformance (`semtile export`)")
    return json.loads(path.read_text())


def cache_root() -> Path:
    """Where semtile caches exports and compiled engines (``$SEMTILE_CACHE`` or ``~/.cache/semtile``)."""
    return Path(os.environ.get("SEMTILE_CACHE", Path.home() / ".cache" / "semtile"))


def _key(model, tile: int) -> str:
    kind = model_kind(model)
    return "-".join([kind, *(sha[:16] for sha in weights_sha256(model).values()), f"t{tile}", f"opset{OPSET}"])


def _cached(model, tile: int, halo: int | None) -> Path:
    """The cached export of ``model`` at ``tile``, made once per weights and tile.

    Safe when several processes ask for the same entry at once (two runs on a
    cold cache): they take turns on a lock file beside the entry, each stages
    into a folder of its own and renames it into place, and whoever comes
    second finds the first one's verified entry and uses it.
    """
    key = _key(model, tile)
    folder = cache_root() / "exports" / key
    if _verified(folder, model, tile):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.with_name(key + ".lock")) as exclusive:
        if _verified(folder, model, tile):  # made by another process while this one waited
            return folder
        if exclusive:  # nobody else is staging this entry: leftovers of interrupted runs can go
            for pattern in (".partial*", ".stale-*"):
                for stale in folder.parent.glob(glob.escape(key) + pattern):
                    shutil.rmtree(stale, ignore_errors=True)
        staging = folder.with_name(f"{key}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            _write(model, staging, tile, halo)
            try:
                staging.rename(folder)  # atomic; fails if the entry exists
            except OSError:
                if _verified(folder, model, tile):  # another process won the race (no lock on this file system)
                    return folder
                old = folder.with_name(f"{key}.stale-{uuid.uuid4().hex[:8]}")
                folder.rename(old)  # a broken entry: set it aside, then take its place
                staging.rename(folder)
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _verified(folder: Path, model, tile: int) -> bool:
    """Whether ``folder`` holds an intact export of these weights at ``tile``."""
    try:
        manifest = read_export_manifest(folder, kind=BUNDLE if isinstance(model, ModelBundle) else None)
        if int(manifest.get("tile", -1)) != tile:
            return False
        if isinstance(model, ModelBundle):
            return all(manifest["sha256"].get(f"{name}.pt") == sha for name, sha in weights_sha256(model).items())
        return manifest.get("weights_sha256") == model.sha256
    except (ModelError, KeyError, ValueError, TypeError, OSError):
        return False


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive ``flock`` on ``path``; yields False where the platform or file system has none."""
    try:
        import fcntl
    except ImportError:  # Windows: the rename is still atomic
        yield False
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # e.g. some network file systems: go on, the rename is still atomic
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

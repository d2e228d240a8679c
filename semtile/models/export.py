"""Model bundles for fast engines: ONNX exports of both networks plus metadata.

A bundle folder holds ``classifier.pt``/``segmenter.pt`` with their cards,
``classifier.onnx``/``segmenter.onnx`` (opset pinned, dynamic batch axis,
input ``tiles`` of shape (batch, 1, T, T) in [0, 1]) and ``bundle.json``:
architecture, labels, hypothesis, tile size, halo, and the sha256 of every
file. Each export is checked with ``onnx.checker`` and against PyTorch.
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

from semtile.io.discover import sha256_file
from semtile.errors import ModelError
from semtile.kernels.window import default_halo
from semtile.models.io import ModelBundle, card_path

__all__ = ["OPSET", "export_bundle", "read_bundle_manifest"]

OPSET = 17
MANIFEST = "bundle.json"



class _SegmenterProbabilities(torch.nn.Module):
    """The segmenter with its sigmoid, so every engine returns probabilities."""

    def __init__(self, segmenter: torch.nn.Module):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.segmenter(x))


def _export_one(module: torch.nn.Module, path: Path, tile: int, output: str) -> None:
    import onnx
    import onnxruntime as ort

    module = module.eval()
    example = torch.rand(2, 1, tile, tile, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which needs
        # onnxscript; for these plain convolutional nets it is exact and checked below.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example,), str(path), opset_version=OPSET, dynamo=False,
            input_names=["tiles"], output_names=[output],
            dynamic_axes={"tiles": {0: "batch"}, output: {0: "batch"}},
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    # The export must compute what PyTorch computes, at another batch size too.
    check = torch.rand(3, 1, tile, tile, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = module(check).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"tiles": check.numpy()})[0]
    if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-4, rtol=1e-4):
        raise ModelError(f"{path}: ONNX export differs from PyTorch (max {np.abs(got - expected).max():.3g})")


def export_bundle(bundle: ModelBundle, out: str | Path, *, tile: int = 256, halo: int | None = None) -> Path:
    """Write weights, cards, ONNX files and ``bundle.json`` for ``bundle`` into ``out``."""
    out = Path(out)
    multiple = max(bundle.classifier.arch.multiple, bundle.segmenter.arch.multiple)
    if tile % multiple:
        raise ModelError(f"tile {tile} must be a multiple of {multiple}")
    out.mkdir(parents=True, exist_ok=True)
    for name, model in (("classifier", bundle.classifier), ("segmenter", bundle.segmenter)):
        if model.path.resolve() != (out / f"{name}.pt").resolve():
            shutil.copyfile(model.path, out / f"{name}.pt")
            card = dict(model.card, weights=f"{name}.pt")
            card_path(out / f"{name}.pt").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    _export_one(bundle.classifier.network, out / "classifier.onnx", tile, "class_logits")
    _export_one(_SegmenterProbabilities(bundle.segmenter.network), out / "segmenter.onnx", tile, "mask_probs")
    files = ["classifier.pt", "classifier.json", "segmenter.pt", "segmenter.json", "classifier.onnx", "segmenter.onnx"]
    training = bundle.segmenter.card.get("training", {})
    manifest = {
        "format": "semtile-bundle/1",
        "opset": OPSET,
        "tile": tile,
        "halo": default_halo(tile) if halo is None else halo,
        "labels": bundle.labels,
        "hypothesis": training.get("hypothesis"),
        "architecture": {"classifier": bundle.classifier.arch.to_dict(), "segmenter": bundle.segmenter.arch.to_dict()},
        "inputs": {"tiles": ["batch", 1, tile, tile], "range": [0.0, 1.0]},
        "outputs": {"classifier.onnx": "class_logits (batch, n_labels)", "segmenter.onnx": "mask_probs (batch, 1, T, T)"},
        "sha256": {name: sha256_file(out / name) for name in files},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def read_bundle_manifest(folder: str | Path, *, verify: bool = True) -> dict:
    """Read ``bundle.json`` and (by default) check every file's sha256."""
    return read_manifest(folder, MANIFEST, "run `semtile export` first", verify=verify)


def read_manifest(folder: str | Path, name: str, missing: str, *, verify: bool = True) -> dict:
    """Read the export manifest ``name`` in ``folder`` and (by default) check the sha256 of every file it lists.

    ``missing`` completes the error when there is no manifest.
    """
    folder = Path(folder)
    path = folder / name
    if not path.is_file():
        raise ModelError(f"{folder}: no {name}; {missing}")
    manifest = json.loads(path.read_text())
    if verify:
        for name, digest in manifest["sha256"].items():
            if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                raise ModelError(f"{folder / name}: missing or changed since export (sha256 mismatch)")
    return manifest


def cache_root() -> Path:
    """Where semtile caches exports and compiled engines (``$SEMTILE_CACHE`` or ``~/.cache/semtile``)."""
    return Path(os.environ.get("SEMTILE_CACHE", Path.home() / ".cache" / "semtile"))


def exported_bundle(bundle: ModelBundle, *, tile: int, halo: int | None = None) -> Path:
    """The ONNX export of ``bundle`` for ``tile``, made once and cached by weight sha256.

    Safe when several processes ask for the same entry at once (two runs on a
    cold cache): they take turns on a lock file beside the entry, each stages
    into a folder of its own and renames it into place, and whoever comes
    second finds the first one's verified entry and uses it.
    """
    key = f"{bundle.classifier.sha256[:16]}-{bundle.segmenter.sha256[:16]}-t{tile}-opset{OPSET}"
    folder = cache_root() / "bundles" / key
    if _verified(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.with_name(key + ".lock")) as exclusive:
        if _verified(folder):  # made by another process while this one waited
            return folder
        if exclusive:  # nobody else is staging this entry: leftovers of interrupted runs can go
            for pattern in (".partial*", ".stale-*"):
                for stale in folder.parent.glob(glob.escape(key) + pattern):
                    shutil.rmtree(stale, ignore_errors=True)
        staging = folder.with_name(f"{key}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            export_bundle(bundle, staging, tile=tile, halo=halo)
            try:
                staging.rename(folder)  # atomic; fails if the entry exists
            except OSError:
                if _verified(folder):  # another process won the race (no lock on this file system)
                    return folder
                old = folder.with_name(f"{key}.stale-{uuid.uuid4().hex[:8]}")
                folder.rename(old)  # a broken entry: set it aside, then take its place
                staging.rename(folder)
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _verified(folder: Path) -> bool:
    try:
        read_bundle_manifest(folder)
        return True
    except (ModelError, KeyError, ValueError, OSError):
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

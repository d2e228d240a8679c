"""Model files on disk, one format for every kind: a plain state dict (``NAME.pt``) beside a JSON card (``NAME.json``).

The card holds what is needed to rebuild the network and to say where it came
from: the architecture (its ``kind`` says which: classifier, segmenter, patch
classifier, autoencoder or VAE), the label values, the training data and
parameters, and the sha256 of the weights, checked on every load. Defect
models' cards add the tile and halo for whole scans and the calibrated
anomaly threshold. Weights load with ``torch.load(weights_only=True)``, so a
model file can never run code.

Cards are written as ``semtile-model/2``; the cards of earlier versions load
unchanged: ``semtile-model/1`` (classifier and segmenter, the built-in model)
and ``semtile-defect-model/1`` (patch classifier, autoencoder, VAE).

A *bundle* is a folder holding ``classifier.pt`` and ``segmenter.pt`` with
their cards; the built-in model is one such folder shipped inside the package.
A folder with only one of the two takes the other from the built-in model (and
says so in the log). A bundle names each part by absolute path and sha256, and
whether it is the built-in one (:mod:`semtile.models.naming`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from semtile.errors import ModelError
from semtile.io.discover import sha256_file
from semtile.logs import get_logger
from semtile.models.cards import builtin_folder, bundle_files, read_card
from semtile.models.kinds import BUNDLE_KINDS, DEFECT_KINDS
from semtile.models.naming import builtin_caveat
from semtile.models.networks import Architecture, DefectArchitecture, architecture, build_model

__all__ = ["CARD_FORMAT", "CARD_FORMATS", "LoadedModel", "ModelBundle", "save_model", "load_model", "update_card",
           "card_path", "load_bundle", "builtin_bundle_dir"]

CARD_FORMAT = "semtile-model/2"
#: Every card format that loads, with the kinds each may hold.
CARD_FORMATS = {CARD_FORMAT: (*BUNDLE_KINDS, *DEFECT_KINDS), "semtile-model/1": BUNDLE_KINDS,
                "semtile-defect-model/1": DEFECT_KINDS}
DEFAULT_TILE = 256

log = get_logger("semtile.models")


def card_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


@dataclass
class LoadedModel:
    """A network of any kind ready for inference (eval mode, CPU), with its card."""

    network: nn.Module
    arch: Architecture | DefectArchitecture
    labels: list
    card: dict
    path: Path
    sha256: str

    @property
    def kind(self) -> str:
        return self.arch.kind

    @property
    def threshold(self) -> float | None:
        """The calibrated anomaly threshold of the card (None if none was calibrated)."""
        value = (self.card.get("threshold") or {}).get("value")
        return None if value is None else float(value)

    @property
    def tile(self) -> int:
        """The tile side the card gives (whole scans of a defect model), else the default 256."""
        return int(self.card.get("tile") or DEFAULT_TILE)

    @property
    def halo(self) -> int | None:
        value = self.card.get("halo")
        return None if value is None else int(value)


@dataclass
class ModelBundle:
    """The classifier and segmenter that ``semtile process`` runs together."""

    classifier: LoadedModel
    segmenter: LoadedModel
    source: str = ""
    builtin: tuple[str, ...] = ()  # the parts that are the built-in ones

    @property
    def caveat(self) -> str:
        """What the built-in parts' answers mean ('' when no part is built in)."""
        return builtin_caveat(self.builtin)

    @property
    def labels(self) -> list:
        return self.classifier.labels

    @property
    def multiple(self) -> int:
        """Tile sides must be a multiple of this (both networks' 2**d)."""
        return max(self.classifier.arch.multiple, self.segmenter.arch.multiple)

    def provenance(self) -> dict:
        return {
            "source": self.source,
            "classifier": {"path": str(Path(self.classifier.path).absolute()), "sha256": self.classifier.sha256,
                           "builtin": "classifier" in self.builtin, "architecture": self.classifier.arch.to_dict()},
            "segmenter": {"path": str(Path(self.segmenter.path).absolute()), "sha256": self.segmenter.sha256,
                          "builtin": "segmenter" in self.builtin,
                          "architecture": self.segmenter.arch.to_dict(),
                          "training": self.segmenter.card.get("training", {})},
        }


def _write_card(path: Path, card: dict) -> None:
    card_path(path).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")


def save_model(network: nn.Module, arch: Architecture | DefectArchitecture, labels: Sequence = (),
               path: str | Path | None = None, **card_fields) -> Path:
    """Write ``path`` (state dict) and its JSON card; return the weights path.

    ``labels``: the label values a classifier or segmenter was trained on (none for the defect kinds);
    ``card_fields`` join the card (training record, tile, halo, threshold...).
    """
    if path is None:
        raise ModelError("save_model: no path to write the model to")
    path = Path(path)
    if path.suffix != ".pt":
        raise ModelError(f"{path}: model files end in .pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    torch.save(state, path)
    card = {"format": CARD_FORMAT, "architecture": arch.to_dict(), "labels": list(labels), "weights": path.name,
            "sha256": sha256_file(path), **card_fields}
    _write_card(path, card)
    return path


def update_card(path: str | Path, **fields) -> dict:
    """Add or replace fields of a saved model's card (the weights and their sha256 stay)."""
    card = json.loads(card_path(Path(path)).read_text())
    card.update(fields)
    _write_card(Path(path), card)
    return card


def _kinds(expect: str | Sequence[str] | None) -> tuple[str, ...]:
    return () if not expect else (expect,) if isinstance(expect, str) else tuple(expect)


def load_model(path: str | Path, expect: str | Sequence[str] | None = None) -> LoadedModel:
    """Load a ``.pt`` state dict and its card, of any kind; the network is in eval mode on the CPU.

    ``expect``: the kind, or kinds, accepted (e.g. ``"classifier"``,
    :data:`~semtile.models.kinds.DEFECT_KINDS`); another kind is a ModelError.
    """
    path = Path(path)
    card_file = card_path(path)
    card = read_card(path)
    if not isinstance(card, dict):
        raise ModelError(f"{card_file}: not a valid model card (a JSON {type(card).__name__})")
    found = card.get("format", "semtile-model/1")  # cards of the first version may lack it
    if found not in CARD_FORMATS:
        raise ModelError(f"{card_file}: not a semtile model card (format {found!r}, expected one of "
                         f"{', '.join(CARD_FORMATS)})")
    try:
        arch = architecture(card["architecture"])
        labels = list(card.get("labels", [])) if found != "semtile-model/1" else list(card["labels"])
    except ModelError as exc:
        raise ModelError(f"{card_file}: not a valid model card ({exc})") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{card_file}: not a valid model card ({exc})") from exc
    if arch.kind not in CARD_FORMATS[found]:
        raise ModelError(f"{card_file}: a {found} card cannot hold a {arch.kind}")
    expect = _kinds(expect)
    if expect and arch.kind not in expect:
        raise ModelError(f"{path}: expected a {' or '.join(expect)}, the card says {arch.kind}")
    sha = sha256_file(path)
    if card.get("sha256") and card["sha256"] != sha:
        raise ModelError(f"{path}: weights do not match the sha256 in {card_file.name}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network = build_model(arch)
        network.load_state_dict(state, strict=True)
    except Exception as exc:  # torch raises many types for bad files
        raise ModelError(f"{path}: cannot load weights ({exc})") from exc
    return LoadedModel(network=network.eval(), arch=arch, labels=labels, card=card, path=path, sha256=sha)


def builtin_bundle_dir() -> Path:
    """Folder of the built-in model shipped in the package."""
    return builtin_folder()


def load_bundle(
    model_dir: str | Path | None = None,
    classifier: str | Path | None = None,
    segmenter: str | Path | None = None,
) -> ModelBundle:
    """Load a bundle folder (default: the built-in one), optionally overriding either part.

    A folder holding only one of ``classifier.pt`` and ``segmenter.pt`` takes
    the other from the built-in model, with a warning in the log; a folder
    holding neither (and not completed by ``classifier``/``segmenter``) is a
    ModelError. Every part is recorded by absolute path; a part whose file lies
    in the built-in folder is named built-in, however it was given.
    """
    files = bundle_files(model_dir, classifier, segmenter)
    clf = load_model(files.paths["classifier"], "classifier")
    seg = load_model(files.paths["segmenter"], "segmenter")
    return ModelBundle(classifier=clf, segmenter=seg, source=files.source, builtin=files.builtin)

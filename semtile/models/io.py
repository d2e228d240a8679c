"""Model files on disk: a plain state dict (``NAME.pt``) beside a JSON card (``NAME.json``).

The card holds what is needed to rebuild the network and to say where it came
from: architecture, label values, training data and parameters, and the
sha256 of the weights. Weights load with ``torch.load(weights_only=True)``,
so a model file can never run code. A *bundle* is a folder holding
``classifier.pt`` and ``segmenter.pt`` with their cards; the built-in model is
one such folder shipped inside the package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from semtile.io.discover import sha256_file
from semtile.errors import ModelError
from semtile.models.networks import Architecture, build_model

__all__ = ["LoadedModel", "ModelBundle", "save_model", "load_model", "load_bundle", "builtin_bundle_dir"]

CARD_FORMAT = "semtile-model/1"



def card_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


@dataclass
class LoadedModel:
    """A network ready for inference, with its card."""

    network: nn.Module
    arch: Architecture
    labels: list
    card: dict
    path: Path
    sha256: str


@dataclass
class ModelBundle:
    """The classifier and segmenter that ``semtile process`` runs together."""

    classifier: LoadedModel
    segmenter: LoadedModel
    source: str = ""

    @property
    def labels(self) -> list:
        return self.classifier.labels

    def provenance(self) -> dict:
        return {
            "source": self.source,
            "classifier": {"path": str(self.classifier.path), "sha256": self.classifier.sha256,
                           "architecture": self.classifier.arch.to_dict()},
            "segmenter": {"path": str(self.segmenter.path), "sha256": self.segmenter.sha256,
                          "architecture": self.segmenter.arch.to_dict(),
                          "training": self.segmenter.card.get("training", {})},
        }


def save_model(network: nn.Module, arch: Architecture, labels: list, path: str | Path, **card_fields) -> Path:
    """Write ``path`` (state dict) and its JSON card; return the weights path."""
    path = Path(path)
    if path.suffix != ".pt":
        raise ModelError(f"{path}: model files end in .pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    torch.save(state, path)
    card = {"format": CARD_FORMAT, "architecture": arch.to_dict(), "labels": list(labels),
            "weights": path.name, "sha256": sha256_file(path), **card_fields}
    card_path(path).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    return path


def load_model(path: str | Path, expect_kind: str | None = None) -> LoadedModel:
    """Load a ``.pt`` state dict and its card; the network is in eval mode on the CPU."""
    path = Path(path)
    card_file = card_path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model weights not found")
    if not card_file.is_file():
        raise ModelError(f"{path}: no model card {card_file.name} beside the weights")
    try:
        card = json.loads(card_file.read_text())
        arch = Architecture(**card["architecture"])
        labels = list(card["labels"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{card_file}: not a valid model card ({exc})") from exc
    if expect_kind and arch.kind != expect_kind:
        raise ModelError(f"{path}: expected a {expect_kind}, the card says {arch.kind}")
    network, sha = load_weights(path, card, lambda: build_model(arch))
    return LoadedModel(network=network, arch=arch, labels=labels, card=card, path=path, sha256=sha)


def load_weights(path: Path, card: dict, build: Callable[[], nn.Module]) -> tuple[nn.Module, str]:
    """The network ``build()`` makes, with the state dict at ``path`` checked against the card's sha256.

    Returns the network in eval mode on the CPU and the weights' sha256.
    """
    sha = sha256_file(path)
    if card.get("sha256") and card["sha256"] != sha:
        raise ModelError(f"{path}: weights do not match the sha256 in {card_path(path).name}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network = build()
        network.load_state_dict(state, strict=True)
    except Exception as exc:  # torch raises many types for bad files
        raise ModelError(f"{path}: cannot load weights ({exc})") from exc
    return network.eval(), sha


def builtin_bundle_dir() -> Path:
    """Folder of the built-in model shipped in the package."""
    return Path(str(resources.files("semtile.models.builtin")))


def load_bundle(
    model_dir: str | Path | None = None,
    classifier: str | Path | None = None,
    segmenter: str | Path | None = None,
) -> ModelBundle:
    """Load a bundle folder (default: the built-in one), optionally overriding either part."""
    folder = Path(model_dir) if model_dir else builtin_bundle_dir()
    if model_dir and not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    clf = load_model(Path(classifier) if classifier else folder / "classifier.pt", "classifier")
    seg = load_model(Path(segmenter) if segmenter else folder / "segmenter.pt", "segmenter")
    return ModelBundle(classifier=clf, segmenter=seg, source="builtin" if not model_dir else str(folder))

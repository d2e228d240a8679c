"""Defect models on disk, like the others: a plain state dict (``NAME.pt``) beside a JSON card (``NAME.json``).

The card holds the architecture (:class:`~semtile.defects.networks.DefectArchitecture`),
the training data, parameters, split and history, the held-out scores, the
anomaly threshold when one was calibrated, the tile and halo for whole scans,
and the sha256 of the weights, checked on every load. Weights load with
``torch.load(weights_only=True)``: a model file can never run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from semtile.defects.networks import DefectArchitecture, build_defect_model
from semtile.errors import ModelError
from semtile.io.discover import sha256_file
from semtile.models.io import card_path, load_weights

__all__ = ["CARD_FORMAT", "DefectModel", "save_defect_model", "load_defect_model", "update_card"]

CARD_FORMAT = "semtile-defect-model/1"


@dataclass
class DefectModel:
    """A defect network ready for inference (eval mode, CPU), with its card."""

    network: nn.Module
    arch: DefectArchitecture
    card: dict
    path: Path
    sha256: str

    @property
    def threshold(self) -> float | None:
        """The calibrated anomaly threshold of the card (None if none was calibrated)."""
        value = (self.card.get("threshold") or {}).get("value")
        return None if value is None else float(value)

    @property
    def tile(self) -> int:
        return int(self.card.get("tile") or 256)

    @property
    def halo(self) -> int | None:
        value = self.card.get("halo")
        return None if value is None else int(value)


def save_defect_model(network: nn.Module, arch: DefectArchitecture, path: str | Path, **card_fields) -> Path:
    """Write ``path`` (state dict) and its JSON card; return the weights path."""
    path = Path(path)
    if path.suffix != ".pt":
        raise ModelError(f"{path}: model files end in .pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    torch.save(state, path)
    card = {"format": CARD_FORMAT, "architecture": arch.to_dict(), "weights": path.name,
            "sha256": sha256_file(path), **card_fields}
    card_path(path).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    return path


def update_card(path: str | Path, **fields) -> dict:
    """Add or replace fields of a saved model's card (the weights and their sha256 stay)."""
    card_file = card_path(Path(path))
    card = json.loads(card_file.read_text())
    card.update(fields)
    card_file.write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    return card


def load_defect_model(path: str | Path, expect: tuple[str, ...] | None = None) -> DefectModel:
    """Load a defect model's weights and card; ``expect`` limits the kinds accepted."""
    path = Path(path)
    card_file = card_path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model weights not found")
    if not card_file.is_file():
        raise ModelError(f"{path}: no model card {card_file.name} beside the weights")
    try:
        card = json.loads(card_file.read_text())
    except ValueError as exc:
        raise ModelError(f"{card_file}: not a valid model card ({exc})") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        found = card.get("format") if isinstance(card, dict) else None
        raise ModelError(f"{card_file}: not a defect model card (format {found!r}, expected {CARD_FORMAT})")
    try:
        arch = DefectArchitecture(**card["architecture"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{card_file}: not a valid defect model card ({exc})") from exc
    if expect and arch.kind not in expect:
        raise ModelError(f"{path}: expected a {' or '.join(expect)}, the card says {arch.kind}")
    network, sha = load_weights(path, card, lambda: build_defect_model(arch))
    return DefectModel(network=network, arch=arch, card=card, path=path, sha256=sha)

"""A classifier + segmenter bundle's cards, read without torch: what a run's plan needs of the model.

The plan of ``semtile process`` (the completion key: the weights' sha256, the
labels, the tile multiple) comes from the cards and the files' hashes alone,
so that a run with nothing to do (every input skipped or refused) imports no
torch. :func:`semtile.models.io.load_bundle` loads and checks the weights
when there is work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from semtile.errors import ModelError
from semtile.io.discover import sha256_file

__all__ = ["CardModel", "BundleCards", "read_bundle_cards"]

#: The defaults of :class:`semtile.models.networks.Architecture`, in its field order.
_ARCH_DEFAULTS = {"c": 32, "d": 4, "n": 2, "N": 1, "n_labels": 16}


@dataclass(frozen=True)
class CardModel:
    path: Path
    sha256: str
    arch: dict  # as Architecture.to_dict() gives it
    labels: tuple
    card: dict

    @property
    def multiple(self) -> int:
        return 2 ** int(self.arch["d"])


@dataclass(frozen=True)
class BundleCards:
    classifier: CardModel
    segmenter: CardModel
    source: str

    @property
    def labels(self) -> tuple:
        return self.classifier.labels

    @property
    def multiple(self) -> int:
        return max(self.classifier.multiple, self.segmenter.multiple)

    def provenance(self) -> dict:
        """What :meth:`semtile.models.io.ModelBundle.provenance` gives for these files."""
        return {
            "source": self.source,
            "classifier": {"path": str(self.classifier.path), "sha256": self.classifier.sha256,
                           "architecture": dict(self.classifier.arch)},
            "segmenter": {"path": str(self.segmenter.path), "sha256": self.segmenter.sha256,
                          "architecture": dict(self.segmenter.arch),
                          "training": self.segmenter.card.get("training", {})},
        }


def _read(path: Path, kind: str) -> CardModel:
    card_file = path.with_suffix(".json")
    if not path.is_file():
        raise ModelError(f"{path}: model weights not found")
    if not card_file.is_file():
        raise ModelError(f"{path}: no model card {card_file.name} beside the weights")
    try:
        card = json.loads(card_file.read_text())
        fields = dict(card["architecture"])
        arch = {"kind": fields.pop("kind"), **_ARCH_DEFAULTS, **fields}
        int(arch["d"])
        labels = tuple(card.get("labels", []))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{card_file}: not a valid model card ({exc})") from exc
    if arch["kind"] != kind:
        raise ModelError(f"{path}: expected a {kind}, the card says {arch['kind']}")
    sha = sha256_file(path)
    if card.get("sha256") and card["sha256"] != sha:
        raise ModelError(f"{path}: weights do not match the sha256 in {card_file.name}")
    return CardModel(path=path, sha256=sha, arch=arch, labels=labels, card=card)


def read_bundle_cards(model_dir: str | Path | None = None, classifier: str | Path | None = None,
                      segmenter: str | Path | None = None) -> BundleCards:
    """The cards of the bundle :func:`semtile.models.io.load_bundle` would load with these arguments."""
    folder = Path(model_dir) if model_dir else Path(str(resources.files("semtile.models.builtin")))
    if model_dir and not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    return BundleCards(classifier=_read(Path(classifier) if classifier else folder / "classifier.pt", "classifier"),
                       segmenter=_read(Path(segmenter) if segmenter else folder / "segmenter.pt", "segmenter"),
                       source="builtin" if not model_dir else str(folder))

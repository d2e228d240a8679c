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
from semtile.logs import get_logger
from semtile.models.naming import PARTS, bundle_source

log = get_logger("semtile.models")

__all__ = ["CardModel", "BundleCards", "BundleFiles", "bundle_files", "read_bundle_cards", "read_card"]

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
class BundleFiles:
    """Which file each part of a bundle is, which parts are the built-in ones, and the bundle's name."""

    paths: dict  # part -> absolute Path
    builtin: tuple  # the parts whose file lies in the built-in folder
    source: str


def builtin_folder() -> Path:
    """The folder of the built-in model shipped in the package."""
    return Path(str(resources.files("semtile.models.builtin")))


def bundle_files(model_dir: str | Path | None = None, classifier: str | Path | None = None,
                 segmenter: str | Path | None = None) -> BundleFiles:
    """The files a bundle of these arguments is made of (no file is read but the folder's listing).

    A folder holding only one of ``classifier.pt`` and ``segmenter.pt`` takes
    the other from the built-in model, with a warning in the log; a folder
    holding neither (and not completed by ``classifier``/``segmenter``) is a
    ModelError. Every part is named by absolute path; a part whose file lies
    in the built-in folder is built-in, however it was given.
    """
    builtin_dir = builtin_folder().resolve()
    folder = Path(model_dir).absolute() if model_dir else None
    if folder is not None and not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    given = {"classifier": classifier, "segmenter": segmenter}
    paths: dict[str, Path] = {}
    filled = []  # parts the folder lacks, taken from the built-in model
    for part in PARTS:
        if given[part]:
            paths[part] = Path(given[part]).absolute()
        elif folder is not None and (folder / f"{part}.pt").is_file():
            paths[part] = folder / f"{part}.pt"
        else:
            paths[part] = builtin_dir / f"{part}.pt"
            filled += [part] if folder is not None else []
    if filled and all(p in filled or given[p] for p in PARTS):  # the folder gave nothing it was asked for
        raise ModelError(f"{folder}: holds neither classifier.pt nor segmenter.pt; give a folder with either "
                         f"or both (the other is then the built-in one), or the files with --classifier / --segmenter")
    builtin = tuple(p for p in PARTS if paths[p].resolve().parent == builtin_dir)
    for part in filled:
        log.warning("model_part_builtin", folder=str(folder), part=part, path=str(paths[part]),
                    note=f"{folder} has no {part}.pt: the built-in {part} is used (give another with --{part})")
    return BundleFiles(paths=paths, builtin=builtin, source=bundle_source(paths, builtin, folder))


@dataclass(frozen=True)
class BundleCards:
    classifier: CardModel
    segmenter: CardModel
    source: str
    builtin: tuple = ()

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
            "classifier": {"path": str(Path(self.classifier.path).absolute()), "sha256": self.classifier.sha256,
                           "builtin": "classifier" in self.builtin, "architecture": dict(self.classifier.arch)},
            "segmenter": {"path": str(Path(self.segmenter.path).absolute()), "sha256": self.segmenter.sha256,
                          "builtin": "segmenter" in self.builtin, "architecture": dict(self.segmenter.arch),
                          "training": self.segmenter.card.get("training", {})},
        }


def read_card(path: str | Path) -> dict:
    """The JSON card beside the weights ``path`` (``NAME.pt`` -> ``NAME.json``); ModelError naming what is missing."""
    path = Path(path)
    card_file = path.with_suffix(".json")
    if not path.is_file():
        raise ModelError(f"{path}: model weights not found")
    if not card_file.is_file():
        raise ModelError(f"{path}: no model card {card_file.name} beside the weights")
    try:
        return json.loads(card_file.read_text())
    except ValueError as exc:
        raise ModelError(f"{card_file}: not a valid model card ({exc})") from exc


def _read(path: Path, kind: str) -> CardModel:
    card_file = path.with_suffix(".json")
    card = read_card(path)
    try:
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
    files = bundle_files(model_dir, classifier, segmenter)
    return BundleCards(classifier=_read(files.paths["classifier"], "classifier"),
                       segmenter=_read(files.paths["segmenter"], "segmenter"), source=files.source,
                       builtin=files.builtin)

"""How the parts of a model are named in provenance, logs and reports, and what the built-in model's answers mean.

No torch here: the results reader and the report use it to read records.
A model's record (``provenance["model"]``) names each part (``segmenter``,
``classifier``) by absolute path and sha256, with ``builtin: true`` where the
part is the built-in one shipped in the package; its ``source`` says the same
in words: ``builtin``, a model folder, or the parts one by one
(``builtin segmenter + classifier /abs/clf.pt``). Records written before the
per-part flag say ``source: builtin`` for the built-in model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["PARTS", "BUILTIN", "bundle_source", "builtin_parts", "builtin_caveat", "builtin_note"]

PARTS = ("segmenter", "classifier")
BUILTIN = "builtin"

_MEANING = {
    "classifier": "its labels are the synthetic copper etching conditions 0-15, not classes of real scans",
    "segmenter": "its masks are the adhesive areas of synthetic etched copper",
}


def bundle_source(paths: Mapping[str, Path], builtin: Iterable[str], folder: Path | None) -> str:
    """The model's name in words: ``builtin``, the folder both parts come from, else each part on its own."""
    builtin = set(builtin)
    if builtin >= set(PARTS):
        return BUILTIN
    if folder is not None and not builtin and all(Path(paths[p]).parent == folder for p in PARTS):
        return str(folder)
    return " + ".join(f"builtin {p}" if p in builtin else f"{p} {paths[p]}" for p in PARTS)


def builtin_parts(model: object) -> list[str]:
    """The parts of a recorded model (a result's ``provenance["model"]``) that are the built-in ones."""
    if not isinstance(model, dict):
        return []
    found = [p for p in PARTS if isinstance(model.get(p), dict) and model[p].get("builtin")]
    if not found and model.get("source") == BUILTIN:  # records without the per-part flag
        return list(PARTS)
    return found


def builtin_caveat(parts: Iterable[str]) -> str:
    """What the answers of the built-in parts mean, and how to train on one's own data ('' for none)."""
    parts = [p for p in PARTS if p in set(parts)]
    if not parts:
        return ""
    which = "model (segmenter and classifier)" if len(parts) == 2 else parts[0]
    meaning = "; ".join(_MEANING[p] for p in reversed(parts))
    trains = " and ".join(f"`semtile train {p}`" for p in reversed(parts))
    return (f"The built-in {which} was trained on synthetic etched-copper scans: {meaning}. "
            f"For your own images, train on your own data ({trains}, see docs/cli.md) and give the result "
            f"with --model DIR.")


def builtin_note(parts: Iterable[str]) -> str:
    """The one-line form of :func:`builtin_caveat` ('' for none), for a command's summary line."""
    parts = [p for p in PARTS if p in set(parts)]
    if not parts:
        return ""
    if "classifier" in parts:
        what = "labels are synthetic copper etching conditions 0-15, not classes of real scans"
    else:
        what = "masks learnt on synthetic etched copper only"
    name = "model" if len(parts) == 2 else parts[0]
    trains = "/".join(reversed(parts))
    return f"built-in {name}: {what} (train your own: semtile train {trains}, docs/cli.md)"

"""bioimage.io model packages (spec 0.5): semtile's models out, any bioimage.io 2D model in.

The package format, here (no engines, no tiling):

* :mod:`.package` reads a package (zip, folder, ``rdf.yaml`` / ``bioimageio.yaml``) into what the pass needs;
* :mod:`.preprocess` applies its preprocessing with statistics over the whole scan;
* :mod:`.network` is the importable architecture of semtile's packages' state-dict weights;
* :mod:`.card` is what a semtile package says of its model (facts, documentation, sample, cover).

Running them, in :mod:`semtile.inference.bioimageio` (a layer up: it uses the engines and the tiled path):
the export of a semtile model (``semtile export MODEL --bioimageio OUT.zip``), the weights on semtile's
engines and the pass ``semtile process SCANS --model PACKAGE`` runs.

The bioimage.io libraries are the optional extra ``semtile[bioimageio]``;
:func:`require` says what to install when they are missing.
"""

from __future__ import annotations

from semtile.errors import SemtileError

__all__ = ["INSTALL", "require", "is_package"]

INSTALL = "pip install 'semtile[bioimageio]'"


def require(what: str = "bioimage.io packages") -> None:
    """SemtileError with the one line to run when bioimageio.spec is not installed."""
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise SemtileError(f"{what} need the bioimage.io libraries: {INSTALL}") from None


def is_package(path) -> bool:
    """Whether ``path`` looks like a bioimage.io package: a .zip, an rdf.yaml / bioimageio.yaml, or a folder with one."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        return (path / "rdf.yaml").is_file() or (path / "bioimageio.yaml").is_file()
    return path.suffix.lower() == ".zip" or path.name in ("rdf.yaml", "bioimageio.yaml") or \
        path.name.endswith((".bioimageio.yaml", ".rdf.yaml"))

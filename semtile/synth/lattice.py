"""Synthetic electron-microscopy patches of a graphene-like lattice with point defects and exact truth.

A honeycomb lattice of atoms (bond length of a few pixels, random rotation
and offset) is rendered as Gaussian spots, blurred by the probe and counted
with shot noise plus a little read noise; brightness, contrast, blur, dose
and a slow background vary from patch to patch. A chosen fraction of the
patches carries one point defect near its centre:

* ``vacancy``: one atom missing, or two neighbours (a divacancy);
* ``distorted_ring``: a Stone-Wales defect, one bond turned by 90 degrees
  about its middle (two pentagons and two heptagons in place of four hexagons);
* ``adatom``: an extra, often heavier atom sitting in the middle of a ring.

The truth is exact: a defect's mask holds the pixels where the noiseless
image with the defect differs from the noiseless perfect image by more than
:data:`MASK_LEVEL` of one atom's peak. Patches are ``label`` 1 (defect) or
0 (perfect); ``labels.csv``, ``truth.csv`` and ``masks/`` sit beside
``images/`` as for the copper surfaces, and the same (seed, index) gives the
same patch whatever the count.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from semtile.errors import SemtileError

__all__ = ["LatticeConfig", "DEFECT_KINDS", "MASK_LEVEL", "synth_lattice", "write_lattice_dataset"]

DEFECT_KINDS = ("vacancy", "distorted_ring", "adatom")
#: A pixel belongs to a defect where the noiseless images differ by more than this share of one atom's peak.
MASK_LEVEL = 0.15


@dataclass(frozen=True)
class LatticeConfig:
    """What ``semtile synth lattice`` makes."""

    count: int = 5000
    defect_fraction: float = 0.02
    size: int = 48
    seed: int = 0
    kinds: tuple[str, ...] = DEFECT_KINDS

    def __post_init__(self) -> None:
        if self.count < 1:
            raise SemtileError(f"lattice: count must be at least 1, got {self.count}")
        if not 0.0 <= self.defect_fraction <= 1.0:
            raise SemtileError(f"lattice: defect fraction must lie in [0, 1], got {self.defect_fraction}")
        if self.size < 16:
            raise SemtileError(f"lattice: patches must be at least 16 pixels wide, got {self.size}")
        bad = [k for k in self.kinds if k not in DEFECT_KINDS]
        if bad or not self.kinds:
            raise SemtileError(f"lattice: defect kinds must be among {', '.join(DEFECT_KINDS)}, got {list(self.kinds)}")


def _honeycomb(rng: np.random.Generator, shape: tuple[int, int], bond: float) -> np.ndarray:
    """Atom positions (y, x) of a rotated, shifted honeycomb covering ``shape`` with a margin."""
    theta = rng.uniform(0.0, np.pi / 3)  # the lattice has sixfold symmetry
    a = bond * np.sqrt(3.0)
    a1 = a * np.array([np.cos(theta), np.sin(theta)])
    a2 = a * np.array([np.cos(theta + np.pi / 3), np.sin(theta + np.pi / 3)])
    basis = [np.zeros(2), (a1 + a2) / 3.0]
    centre = np.array(shape, dtype=float) / 2.0 + rng.uniform(-a, a, size=2)
    reach = int(np.ceil(np.hypot(*shape) / a)) + 2
    i, j = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij")
    cells = i.ravel()[:, None] * a1 + j.ravel()[:, None] * a2
    atoms = np.concatenate([cells + b for b in basis]) + centre
    margin = 3.0 * bond
    keep = ((atoms[:, 0] > -margin) & (atoms[:, 0] < shape[0] + margin)
            & (atoms[:, 1] > -margin) & (atoms[:, 1] < shape[1] + margin))
    return atoms[keep]


def _render(atoms: np.ndarray, weights: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Sum of Gaussian spots of peak ``weights`` at ``atoms`` (noiseless, before the probe blur)."""
    yy = np.arange(shape[0], dtype=np.float64)[:, None]
    xx = np.arange(shape[1], dtype=np.float64)[:, None]
    gy = np.exp(-((yy - atoms[:, 0][None, :]) ** 2) / (2 * sigma**2))  # (rows, atoms)
    gx = np.exp(-((xx - atoms[:, 1][None, :]) ** 2) / (2 * sigma**2))  # (cols, atoms)
    return (gy * weights[None, :]) @ gx.T


def _nearest(atoms: np.ndarray, point: np.ndarray, k: int = 1) -> np.ndarray:
    return np.argsort(np.hypot(*(atoms - point).T))[:k]


def _apply_defect(rng: np.random.Generator, atoms: np.ndarray, weights: np.ndarray, kind: str,
                  centre: np.ndarray, bond: float) -> tuple[np.ndarray, np.ndarray, str]:
    """The atoms and weights with one defect of ``kind`` at ``centre``; the variant's name."""
    i = int(_nearest(atoms, centre)[0])
    if kind == "vacancy":
        if rng.random() < 0.6:
            drop, variant = [i], "single_vacancy"
        else:
            j = int(_nearest(atoms, atoms[i], 2)[1])  # a bonded neighbour
            drop, variant = [i, j], "divacancy"
        keep = np.setdiff1d(np.arange(len(atoms)), drop)
        return atoms[keep], weights[keep], variant
    if kind == "distorted_ring":
        j = int(_nearest(atoms, atoms[i], 2)[1])
        middle = (atoms[i] + atoms[j]) / 2.0
        turn = np.array([[0.0, -1.0], [1.0, 0.0]])
        moved = atoms.copy()
        for k in (i, j):
            moved[k] = middle + turn @ (atoms[k] - middle)
        # The rings around the turned bond relax a little: neighbours pulled towards it.
        near = np.hypot(*(moved - middle).T)
        pull = (near > 0.6 * bond) & (near < 1.8 * bond)
        moved[pull] -= 0.06 * (moved[pull] - middle)
        return moved, weights, "stone_wales"
    # adatom: an extra atom in the middle of the ring nearest the centre.
    ring = atoms[_nearest(atoms, centre, 12)]
    hollows = []
    for p in ring:  # a ring's middle is a point about one bond from six atoms
        for q in ring:
            mid = (p + q) / 2.0
            if abs(np.hypot(*(p - q)) - 2 * bond) < 0.25 * bond:
                hollows.append(mid)
    hollow = min(hollows, key=lambda h: np.hypot(*(h - centre))) if hollows else atoms[i] + [0.0, bond]
    heavy = rng.uniform(1.0, 1.8)  # heavier than carbon: a brighter spot
    return np.vstack([atoms, hollow]), np.append(weights, heavy), "adatom"


def synth_lattice(rng: np.random.Generator, shape: tuple[int, int], defects: list[tuple[str, tuple[float, float]]]
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Render one lattice image with the given defects (kind, (row, col) centre).

    Returns
    -------
    image : (rows, cols) uint8 frame.
    mask : (rows, cols) uint8, 1 where a defect changes the noiseless image.
    variants : the variant of each defect (single_vacancy, divacancy, stone_wales, adatom).
    """
    for kind, _ in defects:
        if kind not in DEFECT_KINDS:
            raise SemtileError(f"lattice: unknown defect kind {kind!r}; known: {', '.join(DEFECT_KINDS)}")
    bond = rng.uniform(5.2, 6.4)  # pixels per C-C bond: three to four rings across a 48-pixel patch
    atoms = _honeycomb(rng, shape, bond)
    weights = np.ones(len(atoms))
    spot = rng.uniform(1.0, 1.35)  # atom size (the projected potential)
    probe = rng.uniform(0.5, 1.0)  # probe blur
    sigma = float(np.hypot(spot, probe))
    perfect = _render(atoms, weights, shape, sigma)
    defective_atoms, defective_weights, variants = atoms, weights, []
    for kind, centre in defects:
        defective_atoms, defective_weights, variant = _apply_defect(
            rng, defective_atoms, defective_weights, kind, np.asarray(centre, dtype=float), bond)
        variants.append(variant)
    clean = _render(defective_atoms, defective_weights, shape, sigma) if defects else perfect
    mask = (np.abs(clean - perfect) > MASK_LEVEL).astype(np.uint8)

    # Contrast: bright atoms on a dark support, with a slow background tilt.
    base = rng.uniform(0.08, 0.25)
    gain = rng.uniform(0.35, 0.6)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] / max(shape)
    background = base + rng.uniform(-0.06, 0.06) * (yy - 0.5) + rng.uniform(-0.06, 0.06) * (xx - 0.5)
    intensity = np.clip(background + gain * clean, 0.0, 1.0)
    dose = rng.uniform(150.0, 400.0)  # electrons per pixel at full intensity
    counted = rng.poisson(intensity * dose) / dose + rng.normal(0.0, 0.01, size=shape)
    image = np.clip(np.rint(counted * 255.0), 0, 255).astype(np.uint8)
    return image, mask, variants


def write_lattice_dataset(out: str | Path, config: LatticeConfig = LatticeConfig()) -> list[dict]:
    """Write ``images/``, ``masks/``, ``labels.csv`` (path,label) and ``truth.csv`` under ``out``.

    Exactly ``round(defect_fraction * count)`` patches carry one defect (label
    1), chosen at random under the seed; the rest are perfect (label 0).
    ``truth.csv``: path, label, kind, variant, defect_pixels, row, col.
    Returns the truth rows.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SemtileError(f"{out}: exists and is not a folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    n_defects = int(round(config.defect_fraction * config.count))
    chooser = np.random.default_rng([config.seed, 0xDEF])
    defective = set(chooser.choice(config.count, size=n_defects, replace=False).tolist())
    size = config.size
    rows = []
    for index in range(config.count):
        rng = np.random.default_rng([config.seed, index])
        defects = []
        if index in defective:
            kind = config.kinds[int(rng.integers(len(config.kinds)))]
            # Near the middle: the patch shows the defect with the rings around it.
            centre = tuple(size / 2.0 + rng.uniform(-size / 8.0, size / 8.0, size=2))
            defects = [(kind, centre)]
        image, mask, variants = synth_lattice(rng, (size, size), defects)
        name = f"p{index:06d}.tif"
        tifffile.imwrite(out / "images" / name, image, metadata=None)
        tifffile.imwrite(out / "masks" / name, mask, metadata=None)
        rows.append({"path": f"images/{name}", "label": int(bool(defects)),
                     "kind": defects[0][0] if defects else "", "variant": variants[0] if variants else "",
                     "defect_pixels": int(mask.sum()),
                     "row": f"{defects[0][1][0]:.2f}" if defects else "",
                     "col": f"{defects[0][1][1]:.2f}" if defects else ""})
    with (out / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([r["path"], r["label"]] for r in rows)
    with (out / "truth.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows

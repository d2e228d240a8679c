"""Files around masks: reading true masks, and ``semtile masks auto`` (centre-biased masks for a folder).

:func:`read_truth_mask` is the one place explanation scoring reads a true
mask: TIFF through tifffile (what ``semtile synth`` writes), PNG/JPEG/BMP
through semtile's own PNG reader where it exists, else scikit-image. Any
non-zero pixel is foreground; a colour mask counts a pixel non-zero in any
channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semtile.errors import DatasetError, SemtileError
from semtile.explain.masks import candidate_masks, centre_biased_mask
from semtile.logs import get_logger

__all__ = ["MASK_SUFFIXES", "read_truth_mask", "find_truth_mask", "read_gray", "ProposedMask", "propose_masks"]

log = get_logger("semtile.explain")

#: File types a true mask may have, in the order they are looked for.
MASK_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
_IMAGE_SUFFIXES = MASK_SUFFIXES


def _read_any(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    try:  # semtile's own reader of PNG/JPEG, where this version has it
        from semtile.io import png as _png  # type: ignore[attr-defined]

        reader = getattr(_png, "read_mask", None) or getattr(_png, "read_image", None)
    except ImportError:
        reader = None
    if reader is not None:
        return np.asarray(reader(path))
    from skimage import io as skio

    return np.asarray(skio.imread(path))


def read_truth_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A true mask as bool (any non-zero pixel, any channel), cropped to ``shape`` (rows from the top: a mask
    that also covers the data bar below the valid area is cut to it). DatasetError naming the file when it
    cannot be read or does not cover ``shape``."""
    path = Path(path)
    try:
        m = _read_any(path)
    except Exception as exc:  # noqa: BLE001 - readers raise many types for a bad file
        raise DatasetError(f"{path}: cannot read the mask ({type(exc).__name__}: {exc})") from None
    if m.ndim == 3:
        m = (m != 0).any(axis=-1) if m.shape[-1] in (3, 4) else m[0]
    if m.ndim != 2:
        raise DatasetError(f"{path}: a mask is a 2-D image, got shape {m.shape}")
    if shape is not None:
        if m.shape[0] < shape[0] or m.shape[1] != shape[1]:
            raise DatasetError(f"{path}: mask of shape {m.shape} does not cover the image's {tuple(shape)}")
        m = m[: shape[0]]
    return m != 0


def find_truth_mask(folder: Path, source: Path) -> Path | None:
    """The mask for image ``source`` in ``folder``: the same file name, else the same stem with a mask suffix."""
    same = folder / source.name
    if same.is_file():
        return same
    for suffix in MASK_SUFFIXES:
        for candidate in (folder / f"{source.stem}{suffix}", folder / f"{source.stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def read_gray(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """An image as float32 gray in [0, 1] without its data bar, and its frame shape: TIFF through semtile's
    scan reader (data bar detected as in ``process``), other types through :func:`read_truth_mask`'s readers."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        from semtile.io.tiff import open_scan

        with open_scan(path) as scan:
            return np.ascontiguousarray(scan.valid().compute(), dtype=np.float32), tuple(scan.info.frame_shape)
    try:
        raw = _read_any(path)
    except Exception as exc:  # noqa: BLE001 - image libraries raise many types; the user gets one message
        raise SemtileError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from None
    if raw.ndim == 3:
        raw = raw[..., :3].mean(axis=-1) if raw.shape[-1] in (3, 4) else raw[0]
    img = raw.astype(np.float32)
    top = float(np.iinfo(raw.dtype).max) if np.issubdtype(raw.dtype, np.integer) else max(float(img.max()), 1.0)
    return img / np.float32(top), tuple(img.shape)


@dataclass
class ProposedMask:
    """What ``masks auto`` did with one image."""

    path: Path
    out: Path | None
    candidates: int
    chosen: str | None  # where the chosen candidate came from
    fraction: float | None  # foreground share of the valid area
    error: str = ""


def propose_masks(inputs: Sequence[str | Path], out: str | Path, *, alpha: float = 1.0, beta: float = 0.05,
                  slic_segments: int = 8, smooth: float = 2.0) -> list[ProposedMask]:
    """Centre-biased masks (003's Algorithm 1) for every image of ``inputs`` (files or folders), written to ``out``.

    Candidates come from :func:`~semtile.explain.masks.candidate_masks`. Each
    mask is written as an 8-bit TIFF of the image's frame (1 = foreground, 0 in
    the data bar), named like the image: the layout ``semtile synth`` gives its
    masks, so ``semtile evaluate --masks OUT`` reads them. One image's failure
    is reported and the others go on.
    """
    import tifffile

    out = Path(out)
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise SemtileError(f"{item}: no such file or folder")
    if not paths:
        raise SemtileError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for path in paths:
        try:
            image, frame = read_gray(path)
            candidates, origin = candidate_masks(image, slic_segments=slic_segments, smooth=smooth)
            if not candidates:
                raise SemtileError(f"{path}: no candidate mask (a flat image?)")
            choice = centre_biased_mask(candidates, alpha=alpha, beta=beta)
            if choice.mask is None:
                raise SemtileError(f"{path}: no candidate covers more than beta = {beta} of the image")
            full = np.zeros(frame, dtype=np.uint8)
            full[: image.shape[0], : image.shape[1]] = choice.mask
            target = out / f"{path.stem}.tif"
            tifffile.imwrite(target, full, compression="zlib")
            done.append(ProposedMask(path, target, len(candidates), origin[choice.index], float(choice.mask.mean())))
        except SemtileError as exc:
            done.append(ProposedMask(path, None, 0, None, None, str(exc)))
            log.error("mask_failed", path=str(path), error=str(exc))
    return done

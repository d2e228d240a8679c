"""The report's pictures of each image: a thumbnail with the mask over the scan, and a larger view in layers.

Read from the store's coarse pyramid levels (never full resolution when a
coarser level will do), composed with numpy and written with Pillow. Scans
are JPEG (SEM noise makes a lossless view 4x larger: 220 kB against 55 kB at
768 px, which at 10,000 images is gigabytes); the mask and maps are PNG
layers with transparency, kept sharp. Files sit beside ``index.html``:

``thumbs/NAME.jpg``        the scan with the adhesive mask over it (RGB, at most ``THUMB`` px)
``views/NAME.jpg``         the scan (gray, at most ``VIEW`` px)
``views/NAME.mask.png``    the adhesive mask, transparent elsewhere (stacked on the scan by the page)
``views/NAME.map-K.png``   each extra map, coloured, translucent (same size as the scan's view)
``maps/NAME.map-K.jpg``    the scan with the map over it, a thumbnail for the maps gallery
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from semtile.logs import get_logger
from semtile.results import MapInfo, ResultImage, Results, open_results

__all__ = ["THUMB", "VIEW", "ADHESIVE_RGBA", "ImagePictures", "render_pictures", "colour_map"]

THUMB = 128  # px, longer side; shown at 96 CSS px, sharp on 1.5x screens
VIEW = 768  # px, longer side of the larger view
ADHESIVE_RGBA = (255, 80, 0, 150)  # the store's label colour (semtile.store.ome_zarr.LABEL_COLOR), a little lighter
MIN_SHARE = 300  # images per worker below which one process draws them all (a worker takes ~1 s to start)

log = get_logger("semtile.report")
_PNG = {"format": "PNG", "compress_level": 1}  # fast: at thousands of images encoding time adds up
_JPEG = {"format": "JPEG", "quality": 85}
# Distinct colours for integer (cluster) maps; 0 stays transparent.
_CATEGORIES = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)], np.uint8)


@dataclass
class ImagePictures:
    """What was drawn of one image: file paths relative to the report folder."""

    name: str
    thumb: str
    view: str
    mask: str
    size: tuple[int, int]  # (width, height) of the view
    maps: dict[str, str] = field(default_factory=dict)  # map name -> layer over the view
    map_thumbs: dict[str, str] = field(default_factory=dict)  # map name -> thumbnail with the map over the scan
    error: str | None = None  # why the pictures could not be drawn (the row stays in the table)


def _fit(shape: tuple[int, int], side: int) -> tuple[int, int]:
    """(width, height) of ``shape`` (rows, cols) scaled down to at most ``side`` on its longer side."""
    rows, cols = shape
    scale = min(1.0, side / max(rows, cols))
    return max(1, round(cols * scale)), max(1, round(rows * scale))


def _gray8(gray: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(np.nan_to_num(gray, nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    image = Image.fromarray(a)
    if image.size == size:
        return a
    return np.asarray(image.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR))


def _over(gray8: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """RGB of ``rgba`` laid over a gray image."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    base = np.repeat(gray8[..., None], 3, axis=2).astype(np.float32)
    return np.rint(base * (1 - alpha) + rgba[..., :3].astype(np.float32) * alpha).astype(np.uint8)


def _mask_rgba(binary: np.ndarray) -> np.ndarray:
    out = np.zeros((*binary.shape, 4), np.uint8)
    out[binary] = ADHESIVE_RGBA
    return out


def colour_map(values: np.ndarray, label_image: bool = False) -> np.ndarray:
    """RGBA of an extra map: integer or label maps in distinct colours (0 clear), others through inferno.

    A 3-D map is taken as channels first (c, y, x) and shown as the channel that
    is largest at each pixel (a cluster or class map). A continuous map is
    scaled from its 1st to its 99th percentile, its opacity rising with the value.
    """
    values = np.asarray(values)
    if values.ndim == 3:
        values = np.argmax(np.nan_to_num(values, nan=-np.inf), axis=0) + 1
        label_image = True
    out = np.zeros((*values.shape, 4), np.uint8)
    if label_image or values.dtype.kind in "biu":
        classes = values.astype(np.int64)
        colours = _CATEGORIES[(classes - 1) % len(_CATEGORIES)]
        out[..., :3] = colours
        out[..., 3] = np.where(classes != 0, 170, 0)
        return out
    finite = np.isfinite(values)
    if not finite.any():
        return out
    lo, hi = np.percentile(values[finite], [1, 99])
    scaled = np.clip((np.where(finite, values, lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    from matplotlib import colormaps  # here: matplotlib is imported for the figures anyway, and only then

    lut = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    out[..., :3] = lut[np.rint(scaled * 255).astype(np.int64)]
    out[..., 3] = np.where(finite, np.rint(40 + 170 * scaled), 0).astype(np.uint8)
    return out


def _map_values(image: ResultImage, info: MapInfo, shape: tuple[int, int]) -> np.ndarray:
    """The map ``info`` at the level nearest above ``shape`` (rows, cols), read with a stride when too large."""
    arrays = [image.map(info.name, k) for k in range(len(info.paths))]
    chosen = arrays[0]
    for array in arrays:  # coarsest level still at least the view's size
        if max(array.shape[-2:]) >= max(shape):
            chosen = array
    step = max(1, max(chosen.shape[-2:]) // max(max(shape), 1))
    return np.asarray(chosen[..., ::step, ::step].compute(scheduler="synchronous"))  # small: no thread pool


def safe_file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "map"


def draw_image(image: ResultImage, folder: Path, want_maps: bool = True) -> ImagePictures:
    """Write the pictures of one result into ``folder`` (which holds thumbs/, views/, maps/)."""
    name = image.name
    pictures = ImagePictures(name=name, thumb=f"thumbs/{name}.jpg", view=f"views/{name}.jpg",
                             mask=f"views/{name}.mask.png", size=(0, 0))
    preview = image.preview(VIEW)
    gray8 = _gray8(preview.gray)
    view_size = _fit(gray8.shape, VIEW)
    view = _resize(gray8, view_size)
    binary = _resize(preview.binary.astype(np.uint8) * 255, view_size, nearest=True) > 127
    pictures.size = view_size
    Image.fromarray(view).save(folder / pictures.view, **_JPEG)
    mask = Image.frombytes("P", view_size, np.ascontiguousarray(binary, dtype=np.uint8).tobytes())
    mask.putpalette([0, 0, 0, *ADHESIVE_RGBA[:3]])
    mask.save(folder / pictures.mask, transparency=bytes([0, ADHESIVE_RGBA[3]]), **_PNG)
    thumb_size = _fit(gray8.shape, THUMB)
    thumb = _over(_resize(view, thumb_size), _mask_rgba(_resize(binary.astype(np.uint8), thumb_size, nearest=True) > 0))
    Image.fromarray(thumb).save(folder / pictures.thumb, **_JPEG)
    if want_maps:
        for k, info in enumerate(image.maps.values()):
            rgba = colour_map(_map_values(image, info, gray8.shape), info.label_image)
            layer = _resize(rgba, view_size, nearest=info.label_image or rgba.shape[:2] != gray8.shape)
            file = f"{name}.map-{k}-{safe_file_part(info.name)}.png"
            Image.fromarray(layer).save(folder / "views" / file, **_PNG)
            pictures.maps[info.name] = f"views/{file}"
            small = _over(_resize(view, thumb_size), _resize(layer, thumb_size, nearest=True))
            Image.fromarray(small).save(folder / "maps" / f"{file[:-4]}.jpg", **_JPEG)
            pictures.map_thumbs[info.name] = f"maps/{file[:-4]}.jpg"
    return pictures


def _draw_one(results: Results, folder: Path, name: str) -> ImagePictures:
    try:
        return draw_image(results[name], folder)
    except Exception as exc:  # noqa: BLE001 - one damaged result must not sink the report
        return ImagePictures(name=name, thumb="", view="", mask="", size=(0, 0), error=f"{type(exc).__name__}: {exc}")


def _draw_share(store: str, csv: str, folder: str, names: list[str]) -> list[ImagePictures]:
    """A worker process's share: it opens the results itself (read-only) and draws ``names``."""
    results = open_results(store, csv=csv)
    return [_draw_one(results, Path(folder), name) for name in names]


def _can_spawn() -> bool:
    """Whether a spawned worker can start: it re-imports ``__main__`` from its file, if it has one.

    Spawned, never forked: a fork copies the parent's thread pools (dask's, an
    OpenMP runtime's) without their threads, and a child that waits on one
    hangs. A spawned worker starts clean, for about a second of imports.
    ``python -`` has a main module whose file does not exist; a notebook has
    none at all, which is fine.
    """
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or Path(main_file).is_file()


def render_pictures(results: Results, folder: Path, names: list[str] | None = None,
                    workers: int | None = None) -> dict[str, ImagePictures]:
    """Draw every result's pictures into ``folder``; a result that fails keeps its error, the rest go on.

    Large runs are shared among ``workers`` processes (default: the cores, at
    most 8). Not threads: every zarr read goes through zarr's one event-loop
    thread, so threads measured no faster than one (11.5 ms an image with 1,
    2 or 4 threads), while processes use the cores. Where worker processes
    cannot run, this process draws everything.
    """
    folder = Path(folder)
    for sub in ("thumbs", "views", "maps"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    names = list(results.names if names is None else names)
    workers = min(workers or min(8, os.cpu_count() or 1), max(1, len(names) // MIN_SHARE))
    drawn: dict[str, ImagePictures] = {}
    if workers > 1 and _can_spawn():
        # Interleaved shares, a few per worker: equal work whatever the order of sizes, and little to pickle.
        shares = [names[k::workers * 4] for k in range(workers * 4)]
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_draw_share, str(results.path), str(results.csv_path), str(folder), share)
                           for share in shares if share]
                for future in futures:
                    drawn.update((p.name, p) for p in future.result())
        except (BrokenProcessPool, OSError) as exc:
            log.warning("report_pictures_in_one_process", reason=f"{type(exc).__name__}: {exc}")
    return {name: drawn.get(name) or _draw_one(results, folder, name) for name in names}

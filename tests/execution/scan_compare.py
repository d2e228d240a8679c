"""Helpers for tests that compare two result stores made from the same scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import zarr
from scipy.ndimage import gaussian_filter


def write_large_scan(path: Path, shape: tuple[int, int], seed: int = 0) -> Path:
    """A uint16 scan with structure at several scales (so masks vary across tiles and regions)."""
    rng = np.random.default_rng(seed)
    coarse = gaussian_filter(rng.random(shape, dtype=np.float32), 40)
    fine = gaussian_filter(rng.random(shape, dtype=np.float32), 2)
    image = (coarse - coarse.min()) / (np.ptp(coarse) + 1e-9) * 0.6 + (fine - fine.min()) / (np.ptp(fine) + 1e-9) * 0.4
    tifffile.imwrite(path, (image * 65535).astype(np.uint16), bigtiff=True, tile=(256, 256))
    return path


def _probability(array) -> np.ndarray:
    """A stored mask as the probability, float32 (uint8 masks are round(p * 255))."""
    values = np.asarray(array[...])
    return values.astype(np.float32) / 255 if values.dtype == np.uint8 else values.astype(np.float32)


def assert_same_results(a: Path, b: Path, names: list[str] | None = None, tol: float = 1e-5) -> list[str]:
    """Every result of store ``a`` equals ``b``'s: mask within ``tol``, labels, ratios, image and label pyramids."""
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    names = names or sorted(p.name for p in Path(a).iterdir() if (p / "zarr.json").is_file())
    assert names == sorted(p.name for p in Path(b).iterdir() if (p / "zarr.json").is_file())
    for name in names:
        _assert_same_result(ga[name], gb[name], name, tol)
    return names


def assert_clean_or_absent(out: Path, reference: Path, tol: float = 1e-6) -> list[str]:
    """Every result in ``out`` (there may be none, or fewer) equals the clean run's of the same name; its names."""
    if not (Path(out) / "zarr.json").is_file():
        return []
    ga, gb = zarr.open_group(str(out), mode="r"), zarr.open_group(str(reference), mode="r")
    names = sorted(p.name for p in Path(out).iterdir() if (p / "zarr.json").is_file())
    for name in names:
        assert (Path(reference) / name / "zarr.json").is_file(), f"{name}: a result no clean run has"
        _assert_same_result(ga[name], gb[name], name, tol)
    return names


def _assert_same_result(ra, rb, name: str, tol: float) -> None:
    sa, sb = ra.attrs["semtile"], rb.attrs["semtile"]
    assert sa["label"] == sb["label"], name
    assert abs(sa["adhesive_ratio"] - sb["adhesive_ratio"]) <= 1e-6, name
    # at the stored precision: a uint8 mask (round(p * 255)) may round a value 1e-6 apart to the next step
    step = 1 / 255 + 1e-6 if ra["mask"].dtype == np.uint8 else 0.0
    assert np.abs(_probability(ra["mask"]) - _probability(rb["mask"])).max() <= max(tol, step), name
    np.testing.assert_allclose(ra["class_probs"][...], rb["class_probs"][...], atol=1e-5, err_msg=name)
    k = 0
    while str(k) in ra:
        np.testing.assert_array_equal(ra[str(k)][...], rb[str(k)][...], err_msg=f"{name} level {k}")
        k += 1
    assert str(k) not in rb

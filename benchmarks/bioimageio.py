"""bioimage.io packages through semtile against bioimageio.core, on the README demo's scans, in one run.

Usage::

    PYTHONPATH=. python benchmarks/bioimageio.py [--images N] [--engine auto] [--scans DIR] [--out FILE.json]

Needs ``semtile[bioimageio]``. Three parts, all on the same scans (default:
the README demo, ``semtile synth demo --per-label 3 --labels 16 --size 480x640
--truth sqrt --seed 123``, its first ``--images``):

1. **export, round trip**: the built-in model exported with ``semtile export
   --bioimageio``, passed through ``bioimageio.core``'s test, then ``semtile
   process`` natively and with ``--model PACKAGE`` on the same engine: the
   largest stored-mask difference (float32), and whether labels and ratios
   are identical.
2. **throughput**: end-to-end megapixels per second of ``semtile process
   --model PACKAGE`` (read, tile, infer, blend, judge, store; engine build
   included) against the package run tile by tile through
   ``bioimageio.core.predict`` (one pipeline built once, blocks of the same
   tile, each scan read from its TIFF; nothing stored), back to back.
3. **seams**: a hand-built package that is not semtile's
   (tests/models/bioimageio_foreign.py: receptive field wider than its
   halo) through ``semtile process`` and through ``bioimageio.core``, whole
   and tile by tile: the largest difference from the whole-image prediction
   away from seams, and the largest step across neighbouring pixels beyond
   the whole-image prediction's own (a seam's jump), for semtile's blend and
   bioimageio.core's crop, and for semtile's blend with a halo wider than the network's reach.

Timings on a shared machine are noisy: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

# This file's own folder first on the path would make `import bioimageio` find this script, not the library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent / "tests" / "models"))


def _cli(*args) -> str:
    from semtile.cli.main import main

    result = CliRunner().invoke(main, list(map(str, args)))
    if result.exit_code != 0:
        raise SystemExit(f"semtile {' '.join(map(str, args))} failed:\n{result.output[-3000:]}")
    return result.output


def _scans(root: Path, given: Path | None, n: int) -> list[Path]:
    if given is None:
        _cli("synth", root / "demo", "--per-label", 3, "--labels", 16, "--size", "480x640", "--truth", "sqrt",
             "--seed", 123)
        given = root / "demo" / "images"
    chosen = sorted(given.glob("*.tif"))[:n]
    folder = root / "scans"
    folder.mkdir()
    for path in chosen:
        (folder / path.name).symlink_to(path.resolve())
    return sorted(folder.glob("*.tif"))


def _valid_raw(path: Path) -> np.ndarray:
    from semtile.io.tiff import open_scan

    with open_scan(path) as scan:
        return np.rint(scan.valid().compute() * 255).astype(np.float32)


def _padded(raw: np.ndarray, step: int, low: int) -> np.ndarray:
    """``raw`` reflected out to the next size of ``low + n * step`` (bioimageio.core takes only sizes the
    package allows, for the whole sample too)."""
    pad = [(0, max(low, -(-s // step) * step) - s) for s in raw.shape]
    return np.pad(raw, pad, mode="reflect")


def _masks(store: Path) -> dict:
    from semtile import open_results

    results = open_results(store)
    return {name: (np.asarray(results[name].stored.mask[...], np.float32), results[name].label,
                   results[name].adhesive_ratio) for name in results.names}


def round_trip(root: Path, scans: Path, engine: str) -> tuple[dict, Path]:
    from bioimageio.core import test_model

    package = root / "builtin.zip"
    _cli("export", "--bioimageio", package)
    status = test_model(package).status
    _cli("process", scans, "--out", root / "native.zarr", "--engine", engine, "--precision", "f32",
         "--mask-dtype", "float32")  # as packages
    _cli("process", scans, "--out", root / "package.zarr", "--model", package, "--engine", engine,
         "--mask-dtype", "float32")
    a, b = _masks(root / "native.zarr"), _masks(root / "package.zarr")
    return {"bioimageio_core_test": status, "images": len(a),
            "max_abs_mask_difference": float(max(np.abs(a[k][0] - b[k][0]).max() for k in a)),
            "labels_identical": all(a[k][1] == b[k][1] for k in a),
            "ratios_identical": all(a[k][2] == b[k][2] for k in a)}, package


def throughput(root: Path, scans: Path, package: Path, engine: str, tag: str, input_id: str, layout) -> dict:
    from bioimageio.core import create_prediction_pipeline, load_description, predict

    paths = sorted(scans.glob("*.tif"))
    pixels = sum(_valid_raw(p).size for p in paths)
    t0 = time.perf_counter()
    _cli("process", scans, "--out", root / f"{tag}-through.zarr", "--model", package, "--engine", engine)
    semtile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    descr = load_description(str(package))
    pipeline = create_prediction_pipeline(descr)
    for path in paths:
        raw = _valid_raw(path)
        x, block = layout(raw)
        predict(model=pipeline, inputs={input_id: x}, input_block_shape={input_id: block})
    core_s = time.perf_counter() - t0
    return {"package": tag, "megapixels": pixels / 1e6, "semtile_mp_per_s": pixels / 1e6 / semtile_s,
            "bioimageio_core_mp_per_s": pixels / 1e6 / core_s, "ratio": core_s / semtile_s,
            "semtile_s": semtile_s, "bioimageio_core_s": core_s}


def seams(root: Path, scans: Path, engine: str) -> tuple[dict, Path]:
    from bioimageio_foreign import HALO, RADIUS, away_from_seams, build_foreign_package, core_prediction, excess_step

    first = sorted(scans.glob("*.tif"))[0]
    package = build_foreign_package(root / "foreign", _valid_raw(first).astype(np.uint8))
    _cli("process", scans, "--out", root / "foreign.zarr", "--model", package, "--engine", engine,
         "--mask-dtype", "float32")
    # The same blend with an overlap wider than the network's reach (--halo 16 > radius 13).
    _cli("process", scans, "--out", root / "foreign-h16.zarr", "--model", package, "--engine", engine, "--halo", 16,
         "--mask-dtype", "float32")
    ours, wide = _masks(root / "foreign.zarr"), _masks(root / "foreign-h16.zarr")
    step_wide = err_wide = 0.0
    tile, core = 256, 256 - 2 * HALO
    away, step_semtile, step_crop, err_semtile, err_crop = 0.0, 0.0, 0.0, 0.0, 0.0
    for path in sorted(scans.glob("*.tif")):
        raw = _valid_raw(path)
        mask = ours[path.stem][0]
        whole = core_prediction(package, raw)
        cropped = core_prediction(package, raw, block=tile)
        keep = away_from_seams(mask.shape, range(core, mask.shape[0], core), range(core, mask.shape[1], core),
                               RADIUS + HALO, RADIUS)
        away = max(away, float(np.abs(mask - whole)[keep].max()))
        inner = (slice(RADIUS, -RADIUS), slice(RADIUS, -RADIUS))  # the image's own edges: padding differs
        step_semtile = max(step_semtile, excess_step(mask[inner], whole[inner]))
        step_crop = max(step_crop, excess_step(cropped[inner], whole[inner]))
        err_semtile = max(err_semtile, float(np.abs(mask - whole)[inner].max()))
        err_crop = max(err_crop, float(np.abs(cropped - whole)[inner].max()))
        step_wide = max(step_wide, excess_step(wide[path.stem][0][inner], whole[inner]))
        err_wide = max(err_wide, float(np.abs(wide[path.stem][0] - whole)[inner].max()))
    return {"package": "hand-built dilated net (byxzc, scale_range 1-99.8%, torchscript + onnx)",
            "receptive_field_radius": RADIUS, "halo": HALO, "tile": tile,
            "max_abs_difference_away_from_seams": away,
            "largest_excess_step_semtile_blend": step_semtile, "largest_excess_step_bioimageio_core_crop": step_crop,
            "max_abs_difference_near_seams_semtile": err_semtile, "max_abs_difference_near_seams_core_crop": err_crop,
            "semtile_halo_16": {"largest_excess_step": step_wide, "max_abs_difference": err_wide}}, \
        package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--scans", type=Path, default=None, help="a folder of .tif scans (default: the README demo)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = {"machine": platform.platform(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="semtile-bench-bioimageio-") as tmp:
        root = Path(tmp)
        paths = _scans(root, args.scans, args.images)
        scans = paths[0].parent
        engine = "openvino" if args.engine == "auto" else args.engine
        report["round_trip"], builtin = round_trip(root, scans, engine)
        print(json.dumps({"round_trip": report["round_trip"]}), flush=True)
        report["seams"], foreign = seams(root, scans, engine)
        print(json.dumps({"seams": report["seams"]}), flush=True)
        report["throughput"] = [
            throughput(root, scans, builtin, args.engine, "builtin", "raw",
                       lambda raw: (_padded(raw, 16, 128)[None, None], {"batch": 1, "channel": 1, "y": 256,
                                                                          "x": 256})),
            throughput(root, scans, foreign, args.engine, "foreign", "image",
                       lambda raw: (raw[None, :, :, None, None], {"batch": 1, "y": 256, "x": 256, "z": 1,
                                                                    "channel": 1})),
        ]
        for row in report["throughput"]:
            print(json.dumps({"throughput": row}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

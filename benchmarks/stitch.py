"""Benchmark the Numba stitch kernel against the NumPy reference.

Usage::

    python benchmarks/stitch.py [--quick] [--repeat N] [--batch B] [--threads N] [--out FILE.json]

Stitches random float32 tiles laid out by a :class:`semtile.inference.split.TileGrid`
(tile 256, halo 32) into a 960x1280 image and, unless ``--quick``, an
8192x8192 image. Two modes are timed for both implementations: ``whole``
(all tiles in one call, then normalise) and ``batched`` (one accumulate call
per batch of tiles, as the pipeline does, then normalise). Numba is warmed up
(compiled) before timing; each figure is the best of ``--repeat`` runs and
covers zeroing the two (preallocated) canvases, accumulating and normalising.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable

import numba
import numpy as np

from semtile.inference.split import TileGrid
from semtile.kernels.stitch import (
    accumulate_tiles,
    accumulate_tiles_reference,
    normalise_canvas,
)
from semtile.kernels.window import blend_window

TILE = 256
HALO = 32


def _run(accumulate: Callable, canvas, weights, tiles, origins, window, batch: int | None) -> np.ndarray:
    canvas.fill(0)
    weights.fill(0)
    n = tiles.shape[0]
    step = n if batch is None else batch
    for s in range(0, n, step):
        accumulate(canvas, weights, tiles[s : s + step], origins[s : s + step], window)
    return normalise_canvas(canvas, weights, out=canvas)


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(shape: tuple[int, int], repeat: int, batch: int) -> list[dict]:
    grid = TileGrid(shape, TILE, HALO)
    origins = grid.origins
    tiles = np.random.default_rng(0).random((len(grid), TILE, TILE), dtype=np.float32)
    window = blend_window(TILE, HALO)
    mp = shape[0] * shape[1] / 1e6
    # Canvases are allocated once (as for one image) and zeroed inside the
    # timed region, so page-fault noise from fresh allocations is left out.
    canvas = np.empty(shape, np.float32)
    weights = np.empty(shape, np.float32)
    rows = []
    for mode, b in (("whole", None), ("batched", batch)):
        # warm-up / compile, and check the two agree
        got = _run(accumulate_tiles, canvas, weights, tiles, origins, window, b).copy()
        ref = _run(accumulate_tiles_reference, canvas, weights, tiles, origins, window, b)
        max_err = float(np.max(np.abs(got - ref)))
        args = (canvas, weights, tiles, origins, window, b)
        t_nb = _best(lambda args=args: _run(accumulate_tiles, *args), repeat)
        t_ref = _best(lambda args=args: _run(accumulate_tiles_reference, *args), repeat)
        rows.append(
            dict(
                image=f"{shape[0]}x{shape[1]}",
                tiles=len(grid),
                mode=mode if b is None else f"batched({b})",
                numba_s=t_nb,
                numba_mps=mp / t_nb,
                reference_s=t_ref,
                reference_mps=mp / t_ref,
                ratio=t_ref / t_nb,
                max_abs_diff=max_err,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="only the 960x1280 image")
    p.add_argument("--repeat", type=int, default=None, help="runs per figure (best is kept)")
    p.add_argument("--batch", type=int, default=32, help="tiles per accumulate call in batched mode")
    p.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    p.add_argument("--out", type=str, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads is not None:
        numba.set_num_threads(args.threads)

    sizes = [((960, 1280), args.repeat or 20)]
    if not args.quick:
        sizes.append(((8192, 8192), args.repeat or 3))

    rows: list[dict] = []
    for shape, repeat in sizes:
        rows.extend(bench(shape, repeat, args.batch))

    print(
        f"tile={TILE} halo={HALO} numba_threads={numba.get_num_threads()} "
        f"numba={numba.__version__} numpy={np.__version__} python={platform.python_version()}\n"
    )
    print("| image | tiles | mode | numba s | numba MP/s | reference s | reference MP/s | ref/numba | max abs diff |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['image']} | {r['tiles']} | {r['mode']} | {r['numba_s']:.4f} | {r['numba_mps']:.1f} "
            f"| {r['reference_s']:.4f} | {r['reference_mps']:.1f} | {r['ratio']:.2f} | {r['max_abs_diff']:.1e} |"
        )
    if args.out:
        meta = dict(
            tile=TILE,
            halo=HALO,
            numba_threads=numba.get_num_threads(),
            numba=numba.__version__,
            numpy=np.__version__,
            python=platform.python_version(),
            machine=platform.machine(),
        )
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

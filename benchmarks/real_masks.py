"""Explanations scored against real masks: shale tiles and axon SEM, held-out images.

For each data set of ``../shared/data`` (never copied: the work folder holds
symbolic links, named so that each mask has its image's name, which is how
``semtile train segmenter --masks`` and ``semtile evaluate --masks`` pair
them):

* **gsc-shale-sem-tiles** (68 labelled 256 x 256 tiles, masks 0/255): tiles
  whose index % 4 == 3 are held out (17), the other 51 train a supervised
  segmenter (no labels.csv: the masks alone; 85/15 train/validation inside
  them). The data has no class labels (SOURCE.md: masks only; index.csv gives
  only the masks' pixel fractions), so no classifier is trained on it: a class
  made by thresholding the masks' own fractions would be scored against the
  same masks. Grad-CAM and CAM rows come from the built-in classifier
  (trained on synthetic copper; it knows nothing of shale), as a reference.
* **axondeepseg-sem** (7 PNGs of rat spinal cord; the axon + myelin masks,
  non-zero = nerve fibre): split by animal, rat1, rat2 and rat5 train, rat3
  (3 images) and rat7 are held out.

Each held-out set is processed with the built-in classifier and the new
segmenter (torch-cpu), explained (``semtile explain``), and scored with
``semtile evaluate --masks`` (τ chosen on a validation part of the held-out
images, scored on the rest). The tables are printed and kept in the work
folder.

    python benchmarks/real_masks.py [--work DIR] [--epochs 30] [--steps 25] [--c 16] [--threads 2]

The segmenter is the paper's architecture made small (c = 16, d = 4, n = 1,
N = 1; 128-pixel crops, batches of 8, 30 x 25 steps) so that training takes a
few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(src, dst)


def _run(cmd: list[str], log: Path) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with log.open("a") as handle:
        done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0,):
        print(log.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")
    print(f"  {seconds:.1f} s", flush=True)
    return seconds


def shale_layout(work: Path) -> dict:
    data = SHARED / "gsc-shale-sem-tiles"
    with (data / "index.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["mask"]]
    parts = {"train": [], "held": []}
    for r in rows:
        image, mask = data / r["image"], data / r["mask"]
        part = "held" if int(r["tile_index"]) % 4 == 3 else "train"
        _link(image, work / f"{part}_images" / image.name)
        _link(mask, work / f"{part}_masks" / image.name)  # the mask under its image's name
        parts[part].append(image.name)
    return parts


def axon_layout(work: Path) -> dict:
    data = SHARED / "axondeepseg-sem"
    with (data / "index.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    parts = {"train": [], "held": []}
    for r in rows:
        image, mask = data / r["image"], data / r["mask_axonmyelin"]
        part = "held" if r["subject"] in ("sub-rat3", "sub-rat7") else "train"
        _link(image, work / f"{part}_images" / image.name)
        _link(mask, work / f"{part}_masks" / image.name)
        parts[part].append(image.name)
    return parts


def run_set(name: str, work: Path, parts: dict, args, crop: int) -> dict:
    log = work / "log.txt"
    seg = work / "segmenter.pt"
    semtile = [sys.executable, "-m", "semtile.cli.main", "--log-json"]
    threads = ["--threads", str(args.threads)]
    times = {}
    print(f"\n== {name}: {len(parts['train'])} training images, {len(parts['held'])} held out", flush=True)
    times["train"] = _run(semtile + ["train", "segmenter", str(work / "train_images"), "--masks", str(work / "train_masks"),
                                     "--out", str(seg), "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps),
                                     "--batch-size", "8", "--crop", str(crop), "--split", "85,15,0", "--seed", "0",
                                     "--c", str(args.c), "--d", "4", "--n", "1", "--N", "1", "--lr", "3e-3", "--loss", args.loss,
                                     *threads], log)
    store = work / "held.zarr"
    if store.exists():
        shutil.rmtree(store)
    times["process"] = _run(semtile + ["process", str(work / "held_images"), "--out", str(store), "--segmenter", str(seg),
                                       "--engine", "torch-cpu", "--databar-rows", "0", *threads], log)
    times["explain"] = _run(semtile + ["explain", str(store), *threads], log)
    times["evaluate"] = _run(semtile + ["evaluate", str(store), "--masks", str(work / "held_masks"),
                                        "--out", str(work / "ev")], log)
    table = (work / "ev" / "explanations.md").read_text()
    print(table)
    baseline = trivial_baseline(work)
    print(f"Reference on the same test images: every pixel foreground gives Dice {baseline['dice']}, "
          f"accuracy {baseline['accuracy']} (foreground share {baseline['share']}).")
    return {"times": times, "table": table, "baseline": baseline}


def trivial_baseline(work: Path) -> dict:
    """What a mask of every pixel foreground scores on the evaluation's test images (masks mostly foreground)."""
    import json

    import numpy as np

    from semtile.explain.propose import read_truth_mask
    from semtile.explain.scores import binary_scores, summarise

    report = json.loads((work / "ev" / "explanations.json").read_text())
    by_stem = {p.stem: p for p in (work / "held_masks").iterdir()}
    scores = []
    for name in report["test"]:
        truth = read_truth_mask(by_stem[name])
        scores.append({**binary_scores(np.ones_like(truth), truth), "share": float(truth.mean())})
    return {m: str(summarise(s[m] for s in scores)) for m in ("dice", "accuracy", "share")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "semtile-real-masks",
                        help="work folder: symbolic links to the data, models, stores, tables (default: "
                             "semtile-real-masks in the system's temporary folder)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--c", type=int, default=16, help="Segmenter channels (d=4, n=1, N=1: a few minutes on 2 cores).")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loss", default="bce+dice", choices=["bce", "dice", "bce+dice"])
    parser.add_argument("--only", choices=["shale", "axon"], default=None)
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: shared data not found")
    out = {}
    for name, layout, crop in (("shale", shale_layout, 128), ("axon", axon_layout, 128)):
        if args.only and args.only != name:
            continue
        work = args.work / name
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        out[name] = run_set(name, work, layout(work), args, crop)
    print("\n== times (s): " + "; ".join(f"{n}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["times"].items())
                                         for n, r in out.items()))


if __name__ == "__main__":
    main()

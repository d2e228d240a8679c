"""The defect numbers (patch scores, copper pixel scores), measured in one run with semtile's own commands' library calls.

1. Lattice patches, 2% with a point defect (``semtile synth lattice``), split
   60/20/20 by label: the supervised patch classifier's AUC-ROC and AP on the
   held-out test split (002's CNN: AUC 0.5); the autoencoder's and the VAE's,
   trained on the perfect training patches only, for every score variant
   (map pooled by max or mean; the VAE's reconstruction error alone and its
   latent term alone); AUC-ROC per defect kind.
2. Copper scans with ``--defects``: pixel AUROC and PRO of the anomaly map of
   an autoencoder trained on defect-free scans, and the anomaly fractions.
3. ONNX Runtime and OpenVINO (f32 and the machine's default precision)
   against PyTorch: patch AUC-ROC difference and largest output difference.
4. An 8192x8192 scan: the tiled anomaly map (256-pixel tiles, halo 32)
   against one whole-image pass of the network, on 1024x1024 windows spread
   over the scan (one pass over each window plus a margin wider than the
   network's reach gives the whole-image pass there exactly), in the bands
   where tiles are blended and elsewhere. Halo 0 for contrast.

    python benchmarks/defects.py --out defects-bench --json defects.json [--quick]

Everything runs on the CPU with ``--threads`` torch/engine threads (1 by
default). Takes about 12 minutes on 2 cores (``--quick``: about 3).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, installed or not

import torch

from semtile.defects.anomaly import anomaly_map
from semtile.defects.conformance import engine_conformance
from semtile.defects.data import load_defect_data
from semtile.defects.scores import map_scores, patch_scores
from semtile.defects.training import DefectTrainConfig, train_autoencoder, train_patch_classifier
from semtile.engines import EngineSettings, create_engine
from semtile.models.io import load_model
from semtile.models.networks import DefectArchitecture, inference_module
from semtile.synth import SynthConfig, databar_height, write_dataset
from semtile.synth.defects import defect_overlay
from semtile.synth.lattice import LatticeConfig, write_lattice_dataset
from semtile.synth.surfaces import synth_surface_with

SPLIT = (0.6, 0.2, 0.2)


def _log(*parts) -> None:
    print(*parts, flush=True)


def _timed(label: str, func, *args, **kwargs):
    t0 = time.perf_counter()
    result = func(*args, **kwargs)
    seconds = time.perf_counter() - t0
    _log(f"  {label}: {seconds:.1f} s")
    return result, seconds


def _per_kind(truth_csv: Path, scores_csv: Path, column: str) -> dict:
    with truth_csv.open(newline="") as handle:
        kind = {Path(r["path"]).name: r["kind"] for r in csv.DictReader(handle)}
    with scores_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = {}
    for k in sorted({v for v in kind.values() if v}):
        chosen = [r for r in rows if r["label"] == "0" or kind[r["path"]] == k]
        y = [int(r["label"]) for r in chosen]
        if sum(y):
            auroc = patch_scores(y, [float(r[column]) for r in chosen])["auroc"]
            out[k] = {"auroc": round(auroc, 4), "defects": sum(y)}
    return out


def lattice_part(work: Path, args) -> dict:
    _log("1. lattice patches")
    data = work / "lattice"
    rows, seconds = _timed(f"synth lattice {args.patches} patches", write_lattice_dataset, data,
                           LatticeConfig(count=args.patches, defect_fraction=0.02, seed=13))
    result: dict = {"patches": len(rows), "defects": sum(r["label"] for r in rows), "synth_seconds": round(seconds, 1)}
    config = DefectTrainConfig(epochs=args.epochs, steps_per_epoch=args.steps, batch_size=32, split=SPLIT,
                               threads=args.threads, seed=0)
    clf, seconds = _timed("train defects (patch classifier)", train_patch_classifier, data, work / "m" / "clf.pt",
                          arch=DefectArchitecture("patch-classifier", c=8),
                          config=DefectTrainConfig(epochs=max(2, args.epochs // 2), steps_per_epoch=args.steps,
                                                   batch_size=32, split=SPLIT, threads=args.threads, seed=0))
    card = load_model(clf).card
    result["classifier"] = {**card["scores"]["test"]["probability"], "seconds": round(seconds, 1),
                            "per_kind": _per_kind(data / "truth.csv", clf.with_suffix(".test.csv"), "probability")}
    for kind in ("autoencoder", "vae"):
        path, seconds = _timed(f"train autoencoder{' --vae' if kind == 'vae' else ''}", train_autoencoder, data,
                               work / "m" / f"{kind}.pt", normal_label=0, config=config,
                               arch=DefectArchitecture(kind, c=8, latent=8, beta=0.1))
        card = load_model(path).card
        scores = {k: v for k, v in card["scores"]["test"].items() if isinstance(v, dict)}
        result[kind] = {"variants": scores, "pixels": card["scores"].get("test_pixels"), "seconds": round(seconds, 1),
                        "per_kind_max": _per_kind(data / "truth.csv", path.with_suffix(".test.csv"), "max"),
                        "normal_train_patches": card["training"]["normal_train_images"]}
    # Engines against PyTorch on the held-out patches.
    loaded = load_defect_data(data, split=SPLIT, seed=0)
    idx = loaded.split["test"]
    patches, labels = loaded.stack(idx), np.array([int(loaded.labels[i]) for i in idx])
    engines = (("onnxruntime", "f32"), ("openvino", "f32"), ("openvino", "auto"))
    result["conformance"] = {}
    for name, path in (("classifier", clf), ("autoencoder", work / "m" / "autoencoder.pt"),
                       ("vae", work / "m" / "vae.pt")):
        report, _ = _timed(f"engines vs PyTorch, {name}", engine_conformance, load_model(path), patches, labels,
                           engines=engines, threads=args.threads)
        result["conformance"][name] = report
    return result


def copper_part(work: Path, args) -> tuple[dict, Path]:
    _log("2. copper scans with --defects")
    normal, defects = work / "copper-normal", work / "copper-defects"
    _timed("synth copper (normal)", write_dataset, normal,
           SynthConfig(per_label=args.copper_per_label, labels=16, size=(480, 640), seed=21))
    _timed("synth copper --defects", write_dataset, defects, SynthConfig(per_label=1, labels=16, size=(480, 640),
                                                                        seed=22, defects=True))
    config = DefectTrainConfig(epochs=args.epochs, steps_per_epoch=args.steps, batch_size=32, crop=64, tile=256,
                               threads=args.threads, seed=0)
    path, seconds = _timed("train autoencoder on defect-free scans", train_autoencoder, normal,
                           work / "m" / "copper-ae.pt", arch=DefectArchitecture("autoencoder", c=8, latent=8),
                           config=config)
    model = load_model(path)
    data = load_defect_data(defects)
    result: dict = {"train_seconds": round(seconds, 1), "threshold": model.card["threshold"]}
    for engine_name, precision in (("torch-cpu", "auto"), ("openvino", "auto")):
        engine = create_engine(engine_name, model, EngineSettings(tile=None, precision=precision, threads=args.threads))[0]
        t0 = time.perf_counter()
        outputs = [anomaly_map(image, engine) for image in data.images]
        seconds = time.perf_counter() - t0
        maps = [m for m, _ in outputs]
        scores = map_scores(maps, data.masks)
        megapixels = sum(image.size for image in data.images) / 1e6
        result[f"{engine_name} {engine.precision}"] = {
            **scores, "mean_anomaly_fraction": float(np.mean([f for _, f in outputs])),
            "mean_defect_fraction": float(np.mean([m.mean() for m in data.masks])),
            "seconds_per_megapixel": round(seconds / megapixels, 3)}
        _log(f"  {engine_name} {engine.precision}: pixel AUROC {scores['pixel_auroc']:.4f}, PRO {scores['pro']:.4f}")
    normal_data = load_defect_data(normal)
    val = normal_data.split["val"] or normal_data.split["train"]
    result["normal_mean_anomaly_fraction"] = float(np.mean([anomaly_map(normal_data.images[i], model)[1] for i in val]))
    return result, path


def seam_part(model_path: Path, args) -> dict:
    side = args.seam_side
    _log(f"3. seams on a {side}x{side} scan")
    model = load_model(model_path)
    rows = side
    while rows - databar_height(rows) < side:
        rows += 1
    (frame, _, bar, _), seconds = _timed("synth copper scan", synth_surface_with, np.random.default_rng(99),
                                         (rows, side), 0.5, defect_overlay(np.random.default_rng(100)))
    image = np.ascontiguousarray(frame[: rows - bar][:side], dtype=np.float32) / 255.0
    del frame
    (tiled, fraction), map_seconds = _timed("anomaly map, tile 256 halo 32 (PyTorch)", anomaly_map, image, model,
                                            tile=256, halo=32, batch_size=8)
    network = inference_module(model.network)
    margin, window = 64, min(1024, side // 2)
    rng = np.random.default_rng(1)
    # Window corners on the network's stride grid (multiples of 8), so that the one pass over a window sees
    # the scan in the same phase as a pass over the whole scan (and as every tile: halo 32, core 192).
    step = model.arch.multiple
    corners = [(int(y) // step * step, int(x) // step * step)
               for y, x in rng.integers(margin, side - window - margin, size=(args.seam_windows, 2))]
    worst, disagree, near, far = 0.0, [], [], []
    scale = float(np.quantile(tiled[::7, ::7], 0.999))
    core = 256 - 2 * 32
    for y, x in corners:
        region = image[y - margin: y + window + margin, x - margin: x + window + margin]
        with torch.inference_mode():
            one = network(torch.from_numpy(np.ascontiguousarray(region))[None, None])[0, 0].numpy()
        one = one[margin: margin + window, margin: margin + window]
        part = tiled[y: y + window, x: x + window]
        diff = np.abs(part - one)
        worst = max(worst, float(diff.max()))
        disagree.append(float(np.mean((part > model.threshold) != (one > model.threshold))))
        yy, xx = np.mgrid[y: y + window, x: x + window]
        # the blend bands: within a halo of a core boundary, where two or four tiles are mixed
        border = (np.minimum(yy % core, core - yy % core) < 32) | (np.minimum(xx % core, core - xx % core) < 32)
        near.append(diff[border].mean())
        far.append(diff[~border].mean())
    # Halo 0 on one window for contrast (the same comparison).
    y, x = corners[0]
    region = image[y - margin: y + window + margin, x - margin: x + window + margin]
    with torch.inference_mode():
        one = network(torch.from_numpy(np.ascontiguousarray(region))[None, None])[0, 0].numpy()
    no_halo, _ = anomaly_map(region, model, tile=256, halo=0)
    inner = (slice(margin, margin + window), slice(margin, margin + window))
    worst_no_halo = float(np.abs(no_halo[inner] - one[inner]).max())
    return {"side": side, "map_seconds": round(map_seconds, 1), "windows": len(corners), "window": window,
            "anomaly_fraction": fraction, "map_p999": scale,
            "max_abs_difference": worst, "max_rel_difference": worst / scale,
            "thresholded_disagreement": float(np.mean(disagree)),
            "mean_difference_in_blend_bands": float(np.mean(near)),
            "mean_difference_elsewhere": float(np.mean(far)),
            "halo0_max_rel_difference": worst_no_halo / scale,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--json", type=Path, default=None, help="Write the numbers here too.")
    parser.add_argument("--quick", action="store_true", help="Smaller data and budgets (a smoke run).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--patches", type=int, default=None)
    parser.add_argument("--seam-side", type=int, default=None)
    args = parser.parse_args()
    args.patches = args.patches or (3000 if args.quick else 20000)
    args.seam_side = args.seam_side or (2048 if args.quick else 8192)
    args.epochs, args.steps = (3, 60) if args.quick else (8, 100)
    args.copper_per_label = 2 if args.quick else 3
    args.seam_windows = 2 if args.quick else 6
    torch.set_num_threads(args.threads)
    os.environ.setdefault("SEMTILE_CACHE", str(Path(tempfile.gettempdir()) / "semtile-defects-bench-cache"))
    work = args.out or Path(tempfile.mkdtemp(prefix="semtile-defects-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = {"threads": args.threads, "quick": args.quick, "torch": torch.__version__}
    report["lattice"] = lattice_part(work, args)
    report["copper"], copper_model = copper_part(work, args)
    report["seams"] = seam_part(copper_model, args)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    _print(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _print(r: dict) -> None:
    lat = r["lattice"]
    _log(f"\nLattice: {lat['patches']} patches, {lat['defects']} defects (2%), split 60/20/20 by label")
    _log("| model | score | AUC-ROC | AP |")
    _log("|---|---|---:|---:|")
    c = lat["classifier"]
    _log(f"| patch classifier | probability | {c['auroc']:.4f} | {c['ap']:.4f} |")
    for kind in ("autoencoder", "vae"):
        for name, s in lat[kind]["variants"].items():
            _log(f"| {kind} | {name} | {s['auroc']:.4f} | {s['ap']:.4f} |")
    _log(f"  test: {c['n']} patches, {c['positives']} defects (AP of chance = {c['prevalence']:.3f})")
    _log(f"  per kind, classifier: {c['per_kind']}")
    for kind in ("autoencoder", "vae"):
        _log(f"  per kind, {kind} max: {lat[kind]['per_kind_max']}; pixels: {lat[kind]['pixels']}")
    for name, report in lat["conformance"].items():
        for key, entry in report.items():
            if key == "torch-cpu":
                continue
            if "error" in entry:
                _log(f"  {name} {key}: {entry['error']}")
            else:
                _log(f"  {name} {key} (runs {entry['precision']}): AUC diff {entry['auroc_difference']:+.5f}, "
                     f"max rel output diff {entry['max_rel_difference']:.2e}")
    cu = r["copper"]
    for key, s in cu.items():
        if isinstance(s, dict) and "pixel_auroc" in s:
            _log(f"Copper --defects, {key}: pixel AUROC {s['pixel_auroc']:.4f}, PRO {s['pro']:.4f}, anomaly fraction "
                 f"{s['mean_anomaly_fraction']:.4f} (true defect share {s['mean_defect_fraction']:.4f}), "
                 f"{s['seconds_per_megapixel']} s/MP")
    _log(f"  normal scans' anomaly fraction at the calibrated threshold: {cu['normal_mean_anomaly_fraction']:.5f}")
    s = r["seams"]
    _log(f"Seams, {s['side']}x{s['side']}: tiled vs one pass max {s['max_rel_difference']:.3f} of the map's 99.9th "
         f"percentile ({s['max_abs_difference']:.3g}), thresholded disagreement {s['thresholded_disagreement']:.2e}, "
         f"mean difference in the blend bands {s['mean_difference_in_blend_bands']:.2e}, elsewhere "
         f"{s['mean_difference_elsewhere']:.2e}; halo 0: {s['halo0_max_rel_difference']:.3f}; map {s['map_seconds']} s")
    _log(f"Total {r['seconds']} s")


if __name__ == "__main__":
    main()

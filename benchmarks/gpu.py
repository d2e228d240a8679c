"""semtile on one CUDA GPU, against PyTorch eager and MONAI's sliding window, in one run.

Same GPU, same built-in weights, same window (256) and overlap (halo 32 = MONAI
overlap 0.25), synthetic 960 x 1280 scans (``--scans``, default 96):

* **eager fp32**: the networks as trained, PyTorch eager, fp32, batches of
  tiles in and maps out (host to device to host), on exactly the tiles of the run;
* **engine floors**: the torch-cuda engine on the same tiles in memory, for
  each variant: fp16 and bf16 (BatchNorm folded, channels-last) replayed from a
  CUDA graph, with and without ``torch.compile`` (Inductor/Triton), and f32;
* **MONAI** ``sliding_window_inference`` (gaussian blend) on every scan on the
  GPU: eager fp32 and fp16 autocast;
* **the device pass** (first, so it is measured whatever the budget leaves):
  ``semtile process`` end to end with the fp16 engine (CUDA graph) through the
  pass that stays on the GPU (the default with torch-cuda: one upload per scan,
  tiles cut, blended, thresholded and encoded there) against the host path
  (tiles cut on the host, maps blended on the GPU by the device merger, or on
  the CPU by Numba), MP/s and the profile of the stages (seconds summed over
  scans); the device pass alone on the scans in memory, per stage; and its
  parity with the host path (binary masks, labels and ratios equal, stored
  probabilities within one count of 1/255);
* **end to end on a local Dask cluster** of ``--workers`` processes sharing the GPU.

Sections after the first are skipped, and say so, once ``--budget`` seconds
have gone (default 270: the whole run ends within about five minutes on an
H200). Prints markdown tables; ``--out`` writes JSON. MP/s: megapixels of scan
per second of wall time (the data bar excluded, as the pipeline excludes it).
``--cpu`` runs only the device-pass section, on the CPU with torch-cpu (a check
of the script on a machine without a GPU; its numbers say nothing of a GPU).

    python benchmarks/gpu.py --out gpu.json          # or benchmarks/gpu.sh on a bare GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from semtile.engines import EngineSettings
from semtile.engines.torch_cpu import TorchCPUEngine
from semtile.engines.torch_cuda import TorchCUDAEngine, bf16_supported, torch_cuda_available
from semtile.execution.batch import run_process
from semtile.execution.distributed import ClusterSpec
from semtile.execution.local import ProcessOptions, process_scans
from semtile.inference.device_pass import STAGES, encode_probability_uint8, judge_on_device
from semtile.inference.segment import SegmentPass, segment_pass
from semtile.inference.split import TileGrid, read_windows
from semtile.io.tiff import open_scan
from semtile.kernels.stitch import stitch_tiles
from semtile.kernels.window import blend_window
from semtile.models.io import load_bundle
from semtile.results import open_results
from semtile.synth import SynthConfig, write_dataset

TILE, HALO = 256, 32


def make_scans(folder: Path, count: int) -> list[Path]:
    write_dataset(folder, SynthConfig(per_label=-(-count // 16), labels=16, size=(960, 1280), truth="sqrt",
                                      seed=4242))
    return sorted((folder / "images").glob("*.tif"))[:count]


def load_tiles(scans: list[Path]):
    out = []
    for path in scans:
        with open_scan(path) as scan:
            image = np.ascontiguousarray(scan.valid().compute(scheduler="threads"), dtype=np.float32)
        grid = TileGrid(image.shape, TILE, HALO)
        out.append((path, image, grid, read_windows(image, grid.origins, TILE)))
    return out


def cuda_timed(fn, repeat: int = 2) -> float:
    """Best of ``repeat`` wall times of ``fn()``, the GPU drained before and after."""
    best = float("inf")
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def eager_fp32(bundle, tiles: np.ndarray, batch: int):
    """The networks as trained, eager fp32: host tiles in, host maps out, batch by batch."""
    classifier = bundle.classifier.network.eval().cuda()
    segmenter = bundle.segmenter.network.eval().cuda()

    def run():
        probs = []
        with torch.inference_mode():
            for i in range(0, len(tiles), batch):
                x = torch.from_numpy(tiles[i: i + batch]).cuda()[:, None]
                classifier(x).float().cpu()
                probs.append(torch.sigmoid(segmenter(x))[:, 0].cpu().numpy())
        return np.concatenate(probs)

    run()  # cuDNN plans
    seconds = cuda_timed(run)
    probs = run()
    classifier.cpu(), segmenter.cpu()
    return seconds, probs


def monai(bundle, images: list[np.ndarray], batch: int, fp16: bool) -> float:
    from monai.inferers import sliding_window_inference

    segmenter = bundle.segmenter.network.eval().cuda()

    def predictor(x):
        return torch.sigmoid(segmenter(x))

    def run():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            for image in images:
                x = torch.from_numpy(image).cuda()[None, None]
                sliding_window_inference(x, (TILE, TILE), batch, predictor, overlap=0.25, mode="gaussian").cpu()

    run()
    seconds = cuda_timed(run)
    segmenter.cpu()
    return seconds


def stage_profile(summary) -> dict:
    totals: dict[str, float] = {}
    for outcome in summary.outcomes:
        for stage, value in (outcome.timings or {}).items():
            totals[stage] = totals.get(stage, 0.0) + float(value)
    return {k: round(v, 3) for k, v in totals.items()}


def timed_process(scans, out: Path, engine, bundle, options, device_pass: bool):
    """``process_scans`` of ``scans`` into ``out`` with the device pass on or off; (seconds, summary)."""
    os.environ["SEMTILE_DEVICE_PASS"] = "1" if device_pass else "0"
    try:
        t0 = time.perf_counter()
        summary = process_scans(scans, out, passes=[SegmentPass.of_engine(engine, bundle, options)], options=options,
                                table=out.with_suffix(".csv"))
        seconds = time.perf_counter() - t0
    finally:
        os.environ.pop("SEMTILE_DEVICE_PASS", None)
    assert not summary.failed, [o.error for o in summary.failed]
    return seconds, summary


def device_pass_section(scans, data, bundle, options, work: Path, mp: float, make_engine, on_gpu: bool,
                        rows: dict, results: dict):
    """The device pass against the host path, end to end and in memory, with stage profiles and parity."""
    variants = [("e2e device pass", True, True)]
    if on_gpu:
        variants.append(("e2e host path, stitch on GPU (device merger)", False, True))
    variants.append(("e2e host path, stitch on CPU (Numba)", False, False))
    profiles, stores = {}, {}
    for label, device_pass, keep_on_device in variants:
        engine = make_engine(keep_on_device)
        timed_process(scans[:4], work / f"warm-{len(stores)}.zarr", engine, bundle, options, device_pass)
        best = float("inf")
        for i in range(2):
            out = work / f"e2e-{len(stores)}-{i}.zarr"
            seconds, summary = timed_process(scans, out, engine, bundle, options, device_pass)
            if seconds < best:
                best, profiles[label], stores[label] = seconds, stage_profile(summary), out
        rows[label] = best
        print(f"{label}: {mp / best:.1f} MP/s; stages (s summed over scans) {profiles[label]}", flush=True)
        if device_pass:  # the pass alone, on the scans in memory: no decode, no write
            runner = SegmentPass.of_engine(engine, bundle, options).build_runner()
            p = SegmentPass.of_engine(engine, bundle, options)
            judge_on_device(data[0][1], p, runner=runner)
            stages = dict.fromkeys(STAGES, 0.0)
            sync()
            t0 = time.perf_counter()
            for _, image, _, _ in data:
                for stage, value in judge_on_device(image, p, runner=runner, mask_dtype="uint8").timings.items():
                    stages[stage] += value
            sync()
            rows["device pass in memory (uint8 out)"] = time.perf_counter() - t0
            profiles["device pass in memory (uint8 out)"] = {k: round(v, 4) for k, v in stages.items()}
            print(f"device pass in memory: {mp / rows['device pass in memory (uint8 out)']:.1f} MP/s; stages (s summed "
                  f"over scans, device time) {profiles['device pass in memory (uint8 out)']}", flush=True)
        del engine
        if on_gpu:
            torch.cuda.empty_cache()
    results["stage_profiles"] = profiles
    # Parity: the device pass against the host path with the same engine, blended by Numba on the CPU.
    device, host = open_results(stores["e2e device pass"]), open_results(stores["e2e host path, stitch on CPU (Numba)"])
    worst, binary_equal, labels_equal, ratios_equal = 0, True, True, True
    for path, *_ in data:
        a, b = device[path.stem], host[path.stem]
        qa = encode_probability_uint8(np.asarray(a.mask, dtype=np.float32)).astype(np.int16)
        qb = encode_probability_uint8(np.asarray(b.mask, dtype=np.float32)).astype(np.int16)
        worst = max(worst, int(np.abs(qa - qb).max()))
        binary_equal &= bool(np.array_equal(np.asarray(a.binary_mask), np.asarray(b.binary_mask)))
        labels_equal &= a.label == b.label
        ratios_equal &= a.adhesive_ratio == b.adhesive_ratio
    results["device_pass_parity"] = {"max_uint8_diff": worst, "binary_masks_equal": binary_equal,
                                     "labels_equal": labels_equal, "ratios_equal": ratios_equal}
    print(f"device pass vs host path (Numba): {results['device_pass_parity']}", flush=True)
    return stores


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="4", help="local Dask cluster sizes sharing the GPU ('' for none)")
    parser.add_argument("--compile", default="default",
                        help="torch.compile modes to measure, comma-separated ('' for none; "
                             "max-autotune-no-cudagraphs takes minutes to build)")
    parser.add_argument("--budget", type=float, default=270.0,
                        help="seconds after which the remaining sections are skipped")
    parser.add_argument("--cpu", action="store_true", help="only the device-pass section, on the CPU (torch-cpu)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    ok, why = torch_cuda_available()
    if not ok and not args.cpu:
        raise SystemExit(f"no GPU: {why} (--cpu checks the script on the CPU)")
    bundle = load_bundle(None)
    batch = args.batch_size
    results: dict = {"gpu": torch.cuda.get_device_name(0) if not args.cpu else "none (--cpu)",
                     "torch": torch.__version__, "cuda": torch.version.cuda,
                     "cpu_cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                     "scans": args.scans, "batch_size": batch, "skipped": []}
    rows: dict[str, float] = {}

    def within_budget(section: str) -> bool:
        if time.perf_counter() - started < args.budget:
            return True
        results["skipped"].append(section)
        print(f"{section}: skipped (--budget {args.budget:.0f} s spent)", flush=True)
        return False

    work = Path(tempfile.mkdtemp(prefix="semtile-gpu-"))
    try:
        scans = make_scans(work / "scans", args.scans)
        data = load_tiles(scans)
        mp = sum(image.size for _, image, _, _ in data) / 1e6
        tiles = np.concatenate([d[3] for d in data])
        results["megapixels"], results["tiles"] = round(mp, 3), len(tiles)
        print(f"{len(scans)} scans, {mp:.1f} MP, {len(tiles)} tiles of {TILE} on {results['gpu']}", flush=True)
        options = ProcessOptions(tile=TILE, halo=HALO, batch_size=batch)

        if args.cpu:
            def make_engine(keep_on_device):
                return TorchCPUEngine(bundle)
        else:
            def make_engine(keep_on_device):
                return TorchCUDAEngine(bundle, precision="fp16", batch_size=batch, tile=TILE,
                                       keep_on_device=keep_on_device)
        results["e2e_engine"] = {"name": "torch-cpu" if args.cpu else "torch-cuda", "precision": "f32" if args.cpu
                                 else "fp16", "compile": None}
        stores = device_pass_section(scans, data, bundle, options, work, mp, make_engine, not args.cpu, rows, results)
        if not args.cpu:
            more_sections(args, bundle, scans, data, tiles, mp, options, stores, rows, results, within_budget, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, results, rows, mp, len(scans))


def more_sections(args, bundle, scans, data, tiles, mp, options, stores, rows, results, within_budget, work) -> None:
    """Eager fp32, the engine floors, MONAI, parity with eager fp32, Dask clusters: as the budget allows."""
    batch = args.batch_size
    ref_probs = None
    if within_budget("eager fp32"):
        rows["eager fp32"], ref_probs = eager_fp32(bundle, tiles, batch)
        print(f"eager fp32: {mp / rows['eager fp32']:.1f} MP/s", flush=True)

    variants = [("fp16", None), *[("fp16", m) for m in args.compile.split(",") if m], ("f32", None)]
    if bf16_supported():
        variants.insert(1, ("bf16", None))
    for precision, mode in variants:
        label = f"engine {precision} graph" + (f" + compile {mode}" if mode else "")
        if not within_budget(label):
            continue
        try:
            t0 = time.perf_counter()
            engine = TorchCUDAEngine(bundle, precision=precision, batch_size=batch, tile=TILE, compile=mode)
            build = time.perf_counter() - t0
            rows[label] = cuda_timed(lambda engine=engine: engine.run(tiles))
            facts = {"build_s": round(build, 1)}
            if ref_probs is not None:
                out = engine.run(tiles[:batch * 2])
                facts["max_prob_diff_vs_fp32"] = float(np.abs(out.mask_probs - ref_probs[:batch * 2]).max())
            results.setdefault("engines", {})[label] = facts
            print(f"{label}: {mp / rows[label]:.1f} MP/s ({facts})", flush=True)
            del engine
        except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, the others go on
            results.setdefault("failed", {})[label] = f"{type(exc).__name__}: {exc}"
            print(f"{label}: FAILED {type(exc).__name__}: {exc}", flush=True)
        torch.cuda.empty_cache()

    images = [image for _, image, _, _ in data]
    for label, fp16 in (("MONAI fp32", False), ("MONAI fp16 autocast", True)):
        if within_budget(label):
            rows[label] = monai(bundle, images, batch, fp16=fp16)
            print(f"{label}: {mp / rows[label]:.1f} MP/s", flush=True)

    if ref_probs is not None:
        # Parity: the device pass (fp16) against eager fp32 stitched by the CPU kernel.
        window = blend_window(TILE, HALO)
        stored = open_results(stores["e2e device pass"])
        agreement, max_diff, ratio_diff, start = [], 0.0, 0.0, 0
        for path, image, grid, t in data:
            want = stitch_tiles(ref_probs[start: start + len(t)], grid.origins, window, image.shape)
            start += len(t)
            got = np.asarray(stored[path.stem].mask.compute(scheduler="threads"), dtype=np.float32)
            agreement.append(float(np.mean((got >= 0.5) == (want >= 0.5))))
            max_diff = max(max_diff, float(np.abs(got - want).max()))
            ratio_diff = max(ratio_diff, abs(float(np.mean(got >= 0.5)) - float(np.mean(want >= 0.5))))
        results["parity"] = {"binary_agreement_min": round(min(agreement), 5), "max_prob_diff": round(max_diff, 4),
                             "max_ratio_diff": round(ratio_diff, 5)}

    for workers in [int(w) for w in args.workers.split(",") if w]:
        label = f"e2e Dask local cluster, {workers} workers sharing the GPU"
        if not within_budget(label):
            continue
        try:
            spec = ClusterSpec(kind="local", workers=workers)
            settings = EngineSettings(tile=TILE, halo=HALO, batch_size=batch, precision="fp16", threads=1)
            passes = [segment_pass(bundle, "torch-cuda", settings, options)]
            run_process(scans[: 2 * workers], work / "warm-c.zarr", passes=passes, options=options, force=True,
                        cluster=spec)
            shutil.rmtree(work / "warm-c.zarr", ignore_errors=True)
            t0 = time.perf_counter()
            summary = run_process(scans, work / f"cluster{workers}.zarr", passes=passes, options=options,
                                  force=True, cluster=spec)
            rows[label] = time.perf_counter() - t0
            assert summary.exit_code == 0, [o.error for o in summary.failed]
            print(f"{label}: {mp / rows[label]:.1f} MP/s (includes starting the cluster)", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported, the report still prints
            results.setdefault("failed", {})[label] = f"{type(exc).__name__}: {exc}"
            print(f"{label}: FAILED {type(exc).__name__}: {exc}", flush=True)


def report(args, results: dict, rows: dict, mp: float, n_scans: int) -> None:
    results["timings"] = {k: {"seconds": round(v, 3), "mp_per_s": round(mp / v, 2)} for k, v in rows.items()}
    ratios = {}
    floors = [v for k, v in rows.items() if k.startswith("engine fp16")]
    e2e = {k: v for k, v in rows.items() if k.startswith("e2e")}
    host = [v for k, v in e2e.items() if "host path" in k]
    if host:
        ratios["e2e device pass / best e2e host path"] = round(min(host) / rows["e2e device pass"], 2)
    if floors:
        ratios["e2e device pass / fp16 floor"] = round(min(floors) / rows["e2e device pass"], 3)
        ratios["e2e (best) / fp16 floor"] = round(min(floors) / min(e2e.values()), 3)
        if "eager fp32" in rows:
            ratios["fp16 floor / eager fp32"] = round(rows["eager fp32"] / min(floors), 2)
    for k in ("MONAI fp16 autocast", "MONAI fp32"):
        if k in rows:
            ratios[f"e2e (best) / {k}"] = round(rows[k] / min(e2e.values()), 2)
    results["ratios"] = ratios
    print(f"\n{results['gpu']}, torch {results['torch']} (CUDA {results['cuda']}), {results['cpu_cores']} CPU cores; "
          f"{n_scans} scans of 960x1280, batch {args.batch_size}\n")
    print("| run | seconds | MP/s |\n|---|---:|---:|")
    for k, v in results["timings"].items():
        print(f"| {k} | {v['seconds']:.2f} | {v['mp_per_s']:.1f} |")
    print("\n| stages (s summed over scans) | " + " | ".join(results.get("stage_profiles", {})) + " |")
    profiles = results.get("stage_profiles", {})
    stages = list(dict.fromkeys(k for prof in profiles.values() for k in prof))
    print("|---|" + "---:|" * len(profiles))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(str(prof.get(stage, "")) for prof in profiles.values()) + " |")
    print("\n| ratio / check | value |\n|---|---:|")
    for k, v in {**ratios, **results.get("device_pass_parity", {}), **results.get("parity", {})}.items():
        print(f"| {k} | {v} |")
    if results["skipped"]:
        print(f"\nskipped for the budget: {', '.join(results['skipped'])}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

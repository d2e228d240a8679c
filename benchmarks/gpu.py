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
* **end to end**: ``semtile process`` on the scans (read, tile, infer, stitch,
  write) with the fastest fp16 engine: in process with stitching on the GPU,
  in process with stitching on the CPU (Numba), and on a local Dask cluster of
  ``--workers`` processes sharing the GPU. A profile of the stages (seconds
  summed over scans) says where the time goes.
* **parity**: the end-to-end fp16 masks against eager fp32 stitched on the CPU.

Prints markdown tables; ``--out`` writes JSON. MP/s: megapixels of scan per
second of wall time (the data bar excluded, as the pipeline excludes it).

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
from semtile.engines.torch_cuda import TorchCUDAEngine, bf16_supported, torch_cuda_available
from semtile.execution.batch import run_process
from semtile.execution.distributed import ClusterSpec
from semtile.execution.local import ProcessOptions, process_scans
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="4,8", help="local Dask cluster sizes sharing the GPU ('' for none)")
    parser.add_argument("--compile", default="default,max-autotune-no-cudagraphs",
                        help="torch.compile modes to measure, comma-separated ('' for none)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ok, why = torch_cuda_available()
    if not ok:
        raise SystemExit(f"no GPU: {why}")
    bundle = load_bundle(None)
    batch = args.batch_size
    results: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "cpu_cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                     "scans": args.scans, "batch_size": batch}
    rows: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="semtile-gpu-"))
    try:
        scans = make_scans(work / "scans", args.scans)
        data = load_tiles(scans)
        mp = sum(image.size for _, image, _, _ in data) / 1e6
        tiles = np.concatenate([d[3] for d in data])
        results["megapixels"], results["tiles"] = round(mp, 3), len(tiles)
        print(f"{len(scans)} scans, {mp:.1f} MP, {len(tiles)} tiles of {TILE} on {results['gpu']}", flush=True)

        rows["eager fp32"], ref_probs = eager_fp32(bundle, tiles, batch)
        print(f"eager fp32: {mp / rows['eager fp32']:.1f} MP/s", flush=True)

        variants = [("fp16", None), *[("fp16", m) for m in args.compile.split(",") if m], ("f32", None)]
        if bf16_supported():
            variants.insert(1, ("bf16", None))
        floors = {}
        for precision, mode in variants:
            label = f"engine {precision} graph" + (f" + compile {mode}" if mode else "")
            try:
                t0 = time.perf_counter()
                engine = TorchCUDAEngine(bundle, precision=precision, batch_size=batch, tile=TILE, compile=mode)
                build = time.perf_counter() - t0
                rows[label] = cuda_timed(lambda engine=engine: engine.run(tiles))
                floors[(precision, mode)] = rows[label]
                out = engine.run(tiles[:batch * 2])
                diff = float(np.abs(out.mask_probs - ref_probs[:batch * 2]).max())
                results.setdefault("engines", {})[label] = {"build_s": round(build, 1), "max_prob_diff_vs_fp32": diff}
                print(f"{label}: {mp / rows[label]:.1f} MP/s (built in {build:.1f} s, max |dp| {diff:.2e})",
                      flush=True)
                del engine
            except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, the others go on
                results.setdefault("failed", {})[label] = f"{type(exc).__name__}: {exc}"
                print(f"{label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            torch.cuda.empty_cache()

        images = [image for _, image, _, _ in data]
        rows["MONAI fp32"] = monai(bundle, images, batch, fp16=False)
        rows["MONAI fp16 autocast"] = monai(bundle, images, batch, fp16=True)
        print(f"MONAI: fp32 {mp / rows['MONAI fp32']:.1f}, fp16 autocast {mp / rows['MONAI fp16 autocast']:.1f} MP/s",
              flush=True)

        # End to end with the fastest fp16 variant.
        fp16 = {k: v for k, v in floors.items() if k[0] == "fp16"}
        best_mode = min(fp16, key=fp16.get)[1] if fp16 else None
        results["e2e_engine"] = {"precision": "fp16", "compile": best_mode}
        options = ProcessOptions(tile=TILE, halo=HALO, batch_size=batch)
        profiles = {}
        for on_device in (True, False):
            engine = TorchCUDAEngine(bundle, precision="fp16", batch_size=batch, tile=TILE, compile=best_mode,
                                     keep_on_device=on_device)
            label = "e2e in process, stitch on " + ("GPU" if on_device else "CPU (Numba)")
            process_scans(scans[:4], work / "warm.zarr", passes=[SegmentPass.of_engine(engine, bundle, options)], options=options,
                          table=work / "warm.csv")
            best = float("inf")
            for i in range(2):
                out = work / f"e2e-{on_device}-{i}.zarr"
                t0 = time.perf_counter()
                summary = process_scans(scans, out, passes=[SegmentPass.of_engine(engine, bundle, options)], options=options,
                                        table=work / f"e2e-{on_device}-{i}.csv")
                seconds = time.perf_counter() - t0
                assert not summary.failed, [o.error for o in summary.failed]
                if seconds < best:
                    best, profiles[label], e2e_store = seconds, stage_profile(summary), out
            rows[label] = best
            print(f"{label}: {mp / best:.1f} MP/s; stages (s summed over scans) {profiles[label]}", flush=True)
            if on_device:
                gpu_store = e2e_store
            del engine
            torch.cuda.empty_cache()
        results["stage_profiles"] = profiles

        # Parity: e2e fp16 (stitched on the GPU) against eager fp32 stitched by the CPU kernel.
        window = blend_window(TILE, HALO)
        stored = open_results(gpu_store)
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
            spec = ClusterSpec(kind="local", workers=workers)
            settings = EngineSettings(tile=TILE, halo=HALO, batch_size=batch, precision="fp16", threads=1)
            passes = [segment_pass(bundle, "torch-cuda", settings, options)]
            run_process(scans[: 2 * workers], work / "warm-c.zarr", passes=passes, options=options, force=True,
                        cluster=spec)
            shutil.rmtree(work / "warm-c.zarr", ignore_errors=True)
            t0 = time.perf_counter()
            summary = run_process(scans, work / f"cluster{workers}.zarr", passes=passes, options=options,
                                  force=True, cluster=spec)
            label = f"e2e Dask local cluster, {workers} workers sharing the GPU"
            rows[label] = time.perf_counter() - t0
            assert summary.exit_code == 0, [o.error for o in summary.failed]
            print(f"{label}: {mp / rows[label]:.1f} MP/s (includes starting the cluster)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results["timings"] = {k: {"seconds": round(v, 3), "mp_per_s": round(mp / v, 2)} for k, v in rows.items()}
    fp16_floor = min(v for k, v in rows.items() if k.startswith("engine fp16"))
    e2e = min(v for k, v in rows.items() if k.startswith("e2e"))
    results["ratios"] = {
        "fp16 floor / eager fp32": round(rows["eager fp32"] / fp16_floor, 2),
        "e2e (best) / fp16 floor": round(fp16_floor / e2e, 3),
        "e2e (best) / MONAI fp16 autocast": round(rows["MONAI fp16 autocast"] / e2e, 2),
        "e2e (best) / MONAI fp32": round(rows["MONAI fp32"] / e2e, 2),
        "fp16 floor / MONAI fp16 autocast": round(rows["MONAI fp16 autocast"] / fp16_floor, 2),
    }
    print(f"\n{results['gpu']}, torch {results['torch']} (CUDA {results['cuda']}), {results['cpu_cores']} CPU cores; "
          f"{len(scans)} scans of 960x1280, batch {batch}\n")
    print("| run | seconds | MP/s |\n|---|---:|---:|")
    for k, v in results["timings"].items():
        print(f"| {k} | {v['seconds']:.2f} | {v['mp_per_s']:.1f} |")
    print("\n| ratio | value |\n|---|---:|")
    for k, v in {**results["ratios"], **results["parity"]}.items():
        print(f"| {k} | {v} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

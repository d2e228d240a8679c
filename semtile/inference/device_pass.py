"""The segment pass that stays on the engine's device: a scan goes up once, uint8 results come back.

:func:`judge_on_device` runs one normalised scan through a
:class:`~semtile.inference.segment.SegmentPass` with every step of the pass on
one torch device (the torch-cuda engine's GPU; the CPU in tests):

* **upload**: the normalised scan goes to the device once;
* **cut**: the edge reflection is done once (one gather of reflected rows and
  columns, the rule of :func:`~semtile.inference.split.read_windows`), then the
  tiles of the pass's :class:`~semtile.inference.split.TileGrid` are a strided
  view of that padded scan (``unfold``), copied once into the engine's batches;
* **infer**: batch by batch through the engine, on its compute stream
  (:meth:`~semtile.engines.torch_cuda.TorchCUDAEngine.run_on_device`; any other
  engine through its numpy interface);
* **blend**: the raised-cosine blend of :class:`~semtile.inference.merge.BlendMerger`
  in four strided adds, ordered so that every pixel receives its (at most four)
  tiles in row-major tile order, as the Numba kernel adds them: the float32
  sums, and so the blended mask, are the CPU path's bit for bit wherever both
  compute IEEE float32 products, sums and quotients (the CPU; CUDA kernels
  without fast math);
* **judge**: the threshold of :meth:`SegmentPass.judge_region` compared in the
  dtype NumPy compares in, the adhesive count and the soft sum reduced there,
  the probability encoded there (``round(p * 255)``, clipped, as stored);
* **download**: the encoded mask, the binary mask and the per-tile class logits
  (``n x K`` floats) come back; the logits are reduced to the label on the host
  by the rule of :mod:`semtile.inference.labels` (:meth:`SegmentPass.finish`),
  so labels are the CPU path's exactly.

:func:`device_jobs` is the same for a list of scans, as the jobs
:func:`semtile.execution.local.scan_results` judges: scans are read ahead on a
pool of threads, and the next scan is queued on the device (copies back into
pinned memory included, :class:`InFlight`) before the last one's results are
taken, so the GPU does not wait on the host between scans;
:func:`device_pass_chosen` says when a run uses it (by default with the
torch-cuda engine; ``SEMTILE_DEVICE_PASS=1`` or ``prefer=True`` with any
engine, ``0``/``False`` never).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from semtile.errors import ImageTooSmallError, SemtileError
from semtile.inference.host_memory import keep_freed_memory
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.inference.passes import Pass
from semtile.inference.run import ScanJob, stream_scans
from semtile.inference.segment import SegmentPass
from semtile.inference.split import TileGrid, reflect_index
from semtile.io.source import read_source
from semtile.io.tiff import open_scan
from semtile.kernels.window import blend_window

__all__ = ["STAGES", "DeviceJudgement", "DeviceScanJob", "InFlight", "judge_on_device", "queue_on_device", "device_jobs", "device_pass_chosen",
           "encode_probability_uint8", "encode_probability_uint8_torch", "load_normalised", "scan_jobs"]

#: The stages :func:`judge_on_device` times, in order.
STAGES = ("upload", "cut", "infer", "blend", "judge", "download")
#: Stored precision of the probability mask: ``round(p * 255)``.
PROBABILITY_STEPS = 255
#: Mask dtypes the pass can hand back (uint8: encoded on the device; the floats as blended).
MASK_DTYPES = {"uint8": torch.uint8, "float16": torch.float16, "float32": torch.float32}
ENVIRONMENT = "SEMTILE_DEVICE_PASS"


def encode_probability_uint8(p: np.ndarray) -> np.ndarray:
    """The stored uint8 probability, ``round(p * 255)`` clipped to [0, 255] (NaN -> 0), on the host.

    Kept beside its torch twin until the store's own encoder is the one place both point at.
    """
    p = np.nan_to_num(np.asarray(p, dtype=np.float32), nan=0.0)
    return np.rint(np.clip(p, 0.0, 1.0) * np.float32(PROBABILITY_STEPS)).astype(np.uint8)


def encode_probability_uint8_torch(p: torch.Tensor) -> torch.Tensor:
    """:func:`encode_probability_uint8` on a float32 tensor, on its device (``torch.round`` rounds half to even,
    as ``np.rint``)."""
    p = torch.nan_to_num(p.to(torch.float32), nan=0.0)
    return torch.round(torch.clamp(p, 0.0, 1.0) * PROBABILITY_STEPS).to(torch.uint8)


@dataclass
class DeviceJudgement:
    """What the store writes for one scan and what :meth:`SegmentPass.finish` needs, from the device.

    ``arrays``: ``mask`` (uint8 encoded, or float) and ``binary_mask`` (bool), as
    :meth:`SegmentPass.judge_region` names them; ``counts``: its counts;
    ``vectors``: the per-tile ``logits`` in row-major tile order; ``timings``:
    seconds per stage of :data:`STAGES`.
    """

    arrays: dict[str, np.ndarray]
    counts: dict[str, float]
    vectors: dict[str, np.ndarray]
    grid: TileGrid
    timings: dict[str, float]
    device: str


class _Clock:
    """Stage times: CUDA events on the stream (read once, at the end: no synchronisation per stage) or wall time."""

    def __init__(self, device: torch.device, stream):
        self.cuda = device.type == "cuda"
        self.stream = stream
        self.marks: list[tuple[str, object]] = []
        self.mark("")

    def mark(self, stage: str) -> None:
        """The stage ``stage`` ends here (the first mark starts the clock)."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(self.stream)
            self.marks.append((stage, event))
        else:
            self.marks.append((stage, time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        out = dict.fromkeys(STAGES, 0.0)
        for (_, start), (stage, end) in zip(self.marks, self.marks[1:]):
            if self.cuda:
                end.synchronize()
                out[stage] += start.elapsed_time(end) / 1000.0
            else:
                out[stage] += end - start
        return out


def _engine_of(runner):
    engine = getattr(runner, "engine", None)
    if engine is None:
        raise SemtileError(f"the device pass needs an engine's runner, got {type(runner).__name__}")
    return engine


def _device_of(engine) -> torch.device:
    device = getattr(engine, "device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")


def _tensor_runner(engine, device: torch.device):
    """``tiles (n, T, T)`` on ``device`` -> (logits, probabilities) on it."""
    on_device = getattr(engine, "run_on_device", None)
    if on_device is not None and device.type == "cuda":
        return on_device

    def through_numpy(tiles: torch.Tensor):  # an engine with a numpy interface: zero-copy views on the CPU
        out = engine.run(tiles.cpu().numpy())
        return (torch.from_numpy(np.asarray(out.class_logits, dtype=np.float32)).to(device),
                torch.from_numpy(np.ascontiguousarray(out.mask_probs, dtype=np.float32)).to(device))

    return through_numpy


def _reflected(n_windows: int, core: int, halo: int, tile: int, size: int, device) -> torch.Tensor:
    """Source indices of the padded axis ``[-halo, (n - 1) * core - halo + tile)``, reflected as read_windows does."""
    wanted = np.arange(-halo, (n_windows - 1) * core - halo + tile, dtype=np.int64)
    return torch.from_numpy(reflect_index(wanted, size)).to(device)


@functools.lru_cache(maxsize=8)
def _geometry(grid: TileGrid, device: torch.device):
    """Per grid and device, made once: reflected row and column indices, the blend window, the blended weights."""
    rows = _reflected(grid.n_rows, grid.core, grid.halo, grid.tile, grid.shape[0], device)
    cols = _reflected(grid.n_cols, grid.core, grid.halo, grid.tile, grid.shape[1], device)
    window = torch.from_numpy(blend_window(grid.tile, grid.halo)).to(device)
    weights = _blend_sum(window.expand(grid.n_rows, grid.n_cols, grid.tile, grid.tile), grid)
    return rows, cols, window, weights


def _windows(padded: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """``(rows, cols, T, T)`` strided view: window ``(i, j)`` is ``padded[i*core : i*core+T, j*core : j*core+T]``."""
    return padded.unfold(0, grid.tile, grid.core).unfold(1, grid.tile, grid.core)


def _blend_sum(products: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Sum of the tiles' ``window * value`` ``(rows, cols, T, T)`` on the padded canvas, cropped to the image.

    Each tile splits into its lower rows ``[2h, T)`` and upper rows ``[0, 2h)``,
    and each of those into its right columns ``[2h, T)`` and left ``[0, 2h)``.
    The parts of one kind do not overlap (each is at most ``core`` wide, at a
    stride of ``core``), so each kind is one strided add; in the order lower-right,
    lower-left, upper-right, upper-left a pixel covered by tiles TL, TR, BL, BR
    gets ``((TL + TR) + BL) + BR``: row-major tile order, as the Numba kernel adds.
    """
    rows, cols, tile, _ = products.shape
    core, h2 = grid.core, 2 * grid.halo
    canvas = torch.zeros((rows * core + h2, cols * core + h2), dtype=torch.float32, device=products.device)
    for r0, r1 in ((h2, tile), (0, h2)):
        if r1 <= r0:
            continue
        for c0, c1 in ((h2, tile), (0, h2)):
            if c1 <= c0:
                continue
            target = canvas[r0: r0 + rows * core, c0: c0 + cols * core].unflatten(0, (rows, core))
            target = target.unflatten(2, (cols, core))[:, : r1 - r0, :, : c1 - c0]
            target.add_(products[:, :, r0:r1, c0:c1].permute(0, 2, 1, 3))
    height, width = grid.shape
    return canvas[grid.halo: grid.halo + height, grid.halo: grid.halo + width]


def _at_least(mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """``mask >= threshold`` compared in the dtype NumPy compares a float32 array with ``threshold`` in."""
    dtype = np.result_type(np.float32, threshold)  # NEP 50: a Python float is cast to the array's float32
    if dtype == np.float32:
        return mask >= torch.tensor(np.float32(threshold), device=mask.device)
    return mask.to(torch.float64) >= torch.tensor(float(threshold), dtype=torch.float64, device=mask.device)


class InFlight:
    """One scan's device pass, queued on the device: :meth:`collect` waits for its copies back and gives the result.

    On CUDA everything, the copies back into pinned memory included, is queued on
    the engine's compute stream without waiting, so the host can read and queue
    the next scan while the GPU works on this one.
    """

    def __init__(self, grid: TileGrid, device: torch.device, clock: _Clock, host: dict[str, torch.Tensor], done):
        self.grid, self.device, self.clock, self.host, self.done = grid, device, clock, host, done

    def collect(self) -> DeviceJudgement:
        if self.done is not None:
            self.done.synchronize()
        host = {name: t.numpy() for name, t in self.host.items()}
        counts = {"adhesive": int(host["adhesive"]), "pixels": int(self.grid.shape[0] * self.grid.shape[1]),
                  "mask_sum": float(host["mask_sum"])}
        return DeviceJudgement(arrays={"mask": host["mask"], "binary_mask": host["binary_mask"]}, counts=counts,
                               vectors={"logits": host["logits"]}, grid=self.grid, timings=self.clock.seconds(),
                               device=str(self.device))


def _to_host(t: torch.Tensor, pinned: bool) -> torch.Tensor:
    """``t`` copied to the host: queued into pinned memory on CUDA, at once on the CPU."""
    if not pinned:
        return t.cpu()
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    out.copy_(t, non_blocking=True)
    return out


def judge_on_device(image: np.ndarray, p: SegmentPass, *, runner=None, device=None,
                    mask_dtype: str = "uint8") -> DeviceJudgement:
    """Pass ``p`` over the normalised 2-D ``image`` with every step on the engine's device; see the module docstring.

    ``runner``: the pass's runner (default: this process's, :meth:`Pass.runner`);
    ``device``: where to work (default: the engine's, the CPU for a CPU engine);
    ``mask_dtype``: ``uint8`` (the stored encoding, done on the device) or ``float16``/``float32``.
    """
    return queue_on_device(image, p, runner=runner, device=device, mask_dtype=mask_dtype).collect()


def queue_on_device(image: np.ndarray, p: SegmentPass, *, runner=None, device=None,
                    mask_dtype: str = "uint8") -> InFlight:
    """:func:`judge_on_device` queued: the scan's work is on the device's stream when this returns."""
    if mask_dtype not in MASK_DTYPES:
        raise SemtileError(f"mask dtype must be one of {', '.join(MASK_DTYPES)}, not {mask_dtype!r}")
    image = np.asarray(image)
    if image.ndim != 2:
        raise SemtileError(f"the device pass takes a 2-D scan, got shape {image.shape}")
    engine = _engine_of(runner if runner is not None else p.runner())
    device = torch.device(device) if device is not None else _device_of(engine)
    stream = getattr(engine, "compute_stream", None) if device.type == "cuda" else None
    run = _tensor_runner(engine, device)
    grid = p.rule.grid(image.shape)
    tile, batch = grid.tile, p.batch_size
    if device.type == "cuda" and stream is None:
        stream = torch.cuda.current_stream(device)
    scope = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with scope, torch.inference_mode():
        clock = _Clock(device, stream)
        scan = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device, non_blocking=True)
        clock.mark("upload")
        rows, cols, window, weights = _geometry(grid, device)
        padded = scan.index_select(0, rows).index_select(1, cols)  # the edge reflection, once
        tiles = _windows(padded, grid).reshape(len(grid), tile, tile)  # one copy: contiguous batches below
        clock.mark("cut")
        probs = torch.empty((len(grid), tile, tile), dtype=torch.float32, device=device)
        logits = None
        for first in range(0, len(grid), batch):
            got_logits, got_probs = run(tiles[first: first + batch])
            if logits is None:
                logits = torch.empty((len(grid), got_logits.shape[1]), dtype=torch.float32, device=device)
            logits[first: first + len(got_logits)].copy_(got_logits)
            probs[first: first + len(got_probs)].copy_(got_probs)  # before the next batch reuses the engine's buffers
            clock.mark("infer")
        del tiles, padded
        by_tile = probs.unflatten(0, (grid.n_rows, grid.n_cols))
        summed = _blend_sum(by_tile * window, grid)
        positive = weights > 0
        mask = torch.where(positive, summed / torch.where(positive, weights, torch.ones_like(weights)),
                           torch.zeros_like(summed))
        del probs, by_tile, summed
        clock.mark("blend")
        binary = _at_least(mask, p.options.threshold)
        adhesive = torch.count_nonzero(binary)
        mask_sum = mask.sum(dtype=torch.float64)
        stored = encode_probability_uint8_torch(mask) if mask_dtype == "uint8" else mask.to(MASK_DTYPES[mask_dtype])
        clock.mark("judge")
        pinned = device.type == "cuda"
        host = {name: _to_host(t, pinned) for name, t in (("mask", stored), ("binary_mask", binary),
                                                          ("logits", logits), ("adhesive", adhesive),
                                                          ("mask_sum", mask_sum))}
        clock.mark("download")
        done = None
        if pinned:
            done = torch.cuda.Event()
            done.record(stream)
    return InFlight(grid, device, clock, host, done)


def device_pass_chosen(passes: Sequence[Pass], prefer: bool | None = None) -> bool:
    """Whether a run of ``passes`` takes the device pass: one segment pass, on torch-cuda unless ``prefer``
    (or ``SEMTILE_DEVICE_PASS``: 1 any engine, 0 never) says otherwise."""
    if prefer is None:
        setting = os.environ.get(ENVIRONMENT, "").strip().lower()
        prefer = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(setting)
    if len(passes) != 1 or not isinstance(passes[0], SegmentPass):
        return False
    return passes[0].engine == "torch-cuda" if prefer is None else bool(prefer)


def scan_jobs(paths: Sequence[Path], passes: Sequence[Pass], options: ProcessOptions, scratch: Path) -> Iterator:
    """A run's small scans as jobs to judge, in input order: through the device pass where
    :func:`device_pass_chosen`, else the host path (:func:`~semtile.inference.run.stream_scans`)."""
    keep_freed_memory()  # each scan's buffers reuse the last one's memory (see the module)
    if device_pass_chosen(passes):
        return device_jobs(paths, passes, options)
    return stream_scans(list(paths), passes, options, scratch)


def load_normalised(path: Path, options: ProcessOptions):
    """The scan's header, its normalised valid area in memory (float32) and the identity of the bytes it was
    decoded from (read once, hashed, decoded from memory), or ImageTooSmallError."""
    source = read_source(path)
    with open_scan(path, page=options.page, databar_rows=options.databar_rows,
                   max_pixels=options.max_pixels, data=source.data) as scan:
        info = scan.info
        rows, cols = info.valid_shape
        if rows < MIN_SIDE or cols < MIN_SIDE:
            raise ImageTooSmallError(path, f"valid area {rows}x{cols} pixels is smaller than {MIN_SIDE}x{MIN_SIDE}")
        image = np.ascontiguousarray(scan.valid().compute(scheduler="synchronous"), dtype=np.float32)
    return info, image, source.identity


@dataclass(eq=False)
class DeviceScanJob(ScanJob):
    """A scan judged by the device pass: ``judged`` holds its (arrays, counts by pass name), ready to store."""

    judged: tuple[dict, dict] | None = None
    facts: dict | None = None  # the runner's description by pass name, with what the device pass did
    timings: dict = field(default_factory=dict)


#: Scans queued on the device at once: the next is queued while the host takes the last one's results.
IN_FLIGHT = 2


def reader_threads() -> int:
    """Threads that read and normalise scans ahead of the device: the host's cores, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


def device_jobs(paths: Sequence[Path], passes: Sequence[Pass], options: ProcessOptions, *,
                mask_dtype: str | None = None, readers: int | None = None) -> Iterator[DeviceScanJob]:
    """Each scan through the device pass, in input order: scans read ahead on ``readers`` threads
    (default :func:`reader_threads`), :data:`IN_FLIGHT` of them queued on the device at once.

    ``mask_dtype``: default ``options.mask_dtype`` where the options have one, else float32.
    A scan that fails is yielded with its error; the others go on.
    """
    (p,) = passes
    runner = p.runner()
    mask_dtype = mask_dtype or getattr(options, "mask_dtype", "float32")
    paths = [Path(path) for path in paths]
    readers = readers or reader_threads()

    def read(path: Path):
        t0 = time.perf_counter()
        info, image, identity = load_normalised(path, options)
        return info, image, identity, time.perf_counter() - t0

    def finish(job: DeviceScanJob, queued: InFlight | None) -> DeviceScanJob:
        if queued is None:
            return job
        try:
            judged = queued.collect()
            job.grids[p.name] = judged.grid
            job.vectors[p.name] = judged.vectors
            job.judged = (judged.arrays, {p.name: judged.counts})
            job.timings.update(judged.timings)
            job.facts = {p.name: {**runner.describe(), "device_pass": {
                "device": judged.device, "stages": list(STAGES[1:5]), "mask_dtype": mask_dtype}}}
        except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the batch
            job.fail(exc)
            job.image = None
        return job

    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="semtile-read") as pool:
        reads = collections.deque()  # futures of the scans read ahead, in input order (bounded: memory)
        queued: collections.deque = collections.deque()  # (job, InFlight or None) on the device, oldest first
        upcoming = iter(paths)
        for path in itertools.islice(upcoming, 2 * readers):
            reads.append(pool.submit(read, path))
        for index, path in enumerate(paths):
            job = DeviceScanJob(index, path)
            current = reads.popleft()
            for more in itertools.islice(upcoming, 1):
                reads.append(pool.submit(read, more))
            on_device = None
            try:
                job.info, job.image, job.identity, job.timings["read"] = current.result()
                on_device = queue_on_device(job.image, p, runner=runner, mask_dtype=mask_dtype)
            except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the batch
                job.fail(exc)
                job.image = None
            queued.append((job, on_device))
            if len(queued) >= IN_FLIGHT:
                yield finish(*queued.popleft())
        while queued:
            yield finish(*queued.popleft())

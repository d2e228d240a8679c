"""The asynchronous engine interface (submit, then collect) on the CPU engines, through the runner, and torch.compile.

A GPU engine keeps several batches in flight; the runner must hand every
batch's results to the right scans in order, whatever the depth. Here a real
CPU engine that defers its work to ``collect`` stands for such an engine, so
the runner's bookkeeping is exercised on any machine.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import zarr

from semtile.engines import EngineSettings, available_engines, create_engine
from semtile.engines.base import EngineOutput, Submitted
from semtile.engines.torch_cpu import TorchCPUEngine
from semtile.execution.local import ProcessOptions, process_scans
from semtile.inference.segment import SegmentPass
from semtile.models.io import load_bundle

OPTIONS = ProcessOptions(tile=64, halo=8, batch_size=3)  # 3: batches straddle scans


class DeferredEngine(TorchCPUEngine):
    """torch-cpu whose ``submit`` only queues: the batch runs at ``collect``, as on a GPU stream."""

    name = "torch-cpu-deferred"

    def __init__(self, bundle, in_flight: int):
        super().__init__(bundle)
        self.in_flight = in_flight
        self.queued: list[int] = []  # ids of submitted, not yet collected batches
        self.deepest = 0

    def submit(self, tiles: np.ndarray) -> Submitted:
        handle = Submitted(len(tiles), np.array(tiles, copy=True))  # the caller may reuse its buffer
        self.queued.append(id(handle))
        self.deepest = max(self.deepest, len(self.queued))
        return handle

    def collect(self, handle: Submitted) -> EngineOutput:
        assert self.queued and self.queued[0] == id(handle), "collected out of submission order"
        self.queued.pop(0)
        return self.run(handle.state)


@pytest.mark.parametrize("name", ["torch-cpu", "onnxruntime", "openvino"])
def test_cpu_engines_submit_then_collect_equals_run(name, tiny_bundle, monkeypatch, tmp_path):
    ok, why = available_engines()[name]
    if not ok:
        pytest.skip(f"{name}: {why}")
    monkeypatch.setenv("SEMTILE_CACHE", str(tmp_path / "cache"))
    engine, _ = create_engine(name, load_bundle(tiny_bundle), EngineSettings(tile=64, halo=8, batch_size=4,
                                                                              precision="f32"))
    tiles = np.random.default_rng(0).random((7, 64, 64), dtype=np.float32)
    handles = [engine.submit(tiles[i: i + 4]) for i in range(0, 7, 4)]
    got = [engine.collect(h) for h in handles]
    want = engine.run(tiles)
    np.testing.assert_array_equal(np.concatenate([g.mask_probs for g in got]), want.mask_probs)
    np.testing.assert_array_equal(np.concatenate([g.class_logits for g in got]), want.class_logits)
    assert engine.in_flight >= 1 and engine.maps_device() is None


@pytest.mark.parametrize("depth", [2, 3])
def test_runner_with_batches_in_flight_gives_the_same_results(depth, tiny_dataset, tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    scans = sorted((tiny_dataset / "images").glob("*.tif"))
    broken = tmp_path / "broken.tif"  # one bad scan in the middle: its batches must not shift the others'
    broken.write_bytes(b"II*\x00 not a tiff")
    scans = scans[:3] + [broken] + scans[3:]
    summaries = {}
    for label, engine in (("sync", TorchCPUEngine(bundle)), ("deferred", DeferredEngine(bundle, depth))):
        summaries[label] = process_scans(scans, tmp_path / f"{label}.zarr", passes=[SegmentPass.of_engine(engine, bundle, OPTIONS)],
                                         options=OPTIONS, table=tmp_path / f"{label}.csv")
        if label == "deferred":
            assert engine.deepest == depth and not engine.queued  # really that deep, and drained
    for label, summary in summaries.items():
        assert [o.status for o in summary.outcomes].count("error") == 1, label
    sync, deferred = zarr.open_group(str(tmp_path / "sync.zarr"), mode="r"), \
        zarr.open_group(str(tmp_path / "deferred.zarr"), mode="r")
    names = [o.group for o in summaries["sync"].outcomes if o.status == "ok"]
    assert len(names) == 8 and names == [o.group for o in summaries["deferred"].outcomes if o.status == "ok"]
    for name in names:
        for key in ("mask", "class_probs"):
            np.testing.assert_array_equal(_level0(deferred[name], key), _level0(sync[name], key), err_msg=name)
    ratios = {label: [o.adhesive_ratio for o in summary.outcomes] for label, summary in summaries.items()}
    assert ratios["deferred"] == ratios["sync"]


class DeviceMapsEngine(DeferredEngine):
    """Deferred torch-cpu whose masks come back as torch tensors, blended by the device merger (here on the CPU):
    the path a GPU engine takes, with its maps never leaving the device."""

    name = "torch-cpu-device-maps"

    def collect(self, handle: Submitted) -> EngineOutput:
        out = super().collect(handle)
        return EngineOutput(class_logits=out.class_logits, mask_probs=torch.from_numpy(out.mask_probs))

    def maps_device(self):
        return ("cpu", None)


def test_runner_blends_device_maps_with_the_device_merger(tiny_dataset, tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    scans = sorted((tiny_dataset / "images").glob("*.tif"))[:4]
    runs = {}
    for label, engine in (("cpu", TorchCPUEngine(bundle)), ("device", DeviceMapsEngine(bundle, 3))):
        summary = process_scans(scans, tmp_path / f"{label}.zarr", passes=[SegmentPass.of_engine(engine, bundle, OPTIONS)], options=OPTIONS,
                                table=tmp_path / f"{label}.csv")
        assert all(o.status == "ok" for o in summary.outcomes), label
        runs[label] = (summary, zarr.open_group(str(tmp_path / f"{label}.zarr"), mode="r"))
    for outcome in runs["cpu"][0].outcomes:
        a, b = _level0(runs["cpu"][1][outcome.group], "mask"), _level0(runs["device"][1][outcome.group], "mask")
        # The stored mask is quantised: the two blends (float32 rounding apart) give the same stored values
        # except where a value sits on a quantisation boundary.
        assert np.mean(a == b) > 0.999 and np.abs(a.astype(np.float64) - b).max() <= 1
    assert [o.adhesive_ratio for o in runs["device"][0].outcomes] == \
        pytest.approx([o.adhesive_ratio for o in runs["cpu"][0].outcomes], abs=1e-3)


def _level0(group, key):
    node = group[key] if key in group else group["labels"][key]
    return node["0"][:] if isinstance(node, zarr.Group) else node[:]


def _has_compiler() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.mark.slow
@pytest.mark.skipif(not _has_compiler(), reason="torch.compile on the CPU needs a C++ compiler")
def test_torch_compile_on_the_cpu_matches_eager(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    tiles = np.random.default_rng(1).random((4, 64, 64), dtype=np.float32)
    eager = TorchCPUEngine(bundle).run(tiles)
    compiled_engine = TorchCPUEngine(bundle, compile="default")
    compiled = compiled_engine.run(tiles)
    assert compiled_engine.describe()["compile"] == "default"
    np.testing.assert_allclose(compiled.mask_probs, eager.mask_probs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(compiled.class_logits, eager.class_logits, atol=1e-3, rtol=1e-3)


def test_torch_compile_is_refused_for_other_engines(tiny_bundle):
    from semtile.errors import SemtileError

    with pytest.raises(SemtileError, match="torch.compile applies to the torch-cuda and torch-cpu engines, not onnxruntime"):
        create_engine("onnxruntime", load_bundle(tiny_bundle), EngineSettings(tile=64, halo=8, compile="default"))
    with pytest.raises(SemtileError, match="torch.compile mode must be"):
        TorchCPUEngine(load_bundle(tiny_bundle), compile="fastest")


class BackgroundEngine(TorchCPUEngine):
    """torch-cpu run on a thread of its own, two batches in flight: the way the OpenVINO engine runs."""

    name = "torch-cpu-background"
    background, in_flight = True, 2

    def __init__(self, bundle, fail_on_call: int | None = None):
        super().__init__(bundle)
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.threads: set[str] = set()

    def run(self, tiles: np.ndarray) -> EngineOutput:
        import threading

        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.calls == self.fail_on_call:
            raise RuntimeError("this batch failed on the engine's thread")
        return super().run(tiles)


def test_a_background_engine_runs_off_the_callers_thread_and_raises_at_collect(tiny_bundle):
    import pickle
    import threading

    bundle = load_bundle(tiny_bundle)
    engine = BackgroundEngine(bundle, fail_on_call=2)
    tiles = np.random.default_rng(2).random((6, 64, 64), dtype=np.float32)
    handles = [engine.submit(tiles[i: i + 2]) for i in range(0, 6, 2)]
    first = engine.collect(handles[0])
    with pytest.raises(RuntimeError, match="failed on the engine's thread"):
        engine.collect(handles[1])
    third = engine.collect(handles[2])  # one batch's failure leaves the next one's result whole
    want = TorchCPUEngine(bundle).run(tiles)
    np.testing.assert_array_equal(first.mask_probs, want.mask_probs[:2])
    np.testing.assert_array_equal(third.mask_probs, want.mask_probs[4:])
    assert engine.threads and threading.current_thread().name not in engine.threads
    assert all(name.startswith("engine") for name in engine.threads)
    assert "_thread" not in pickle.loads(pickle.dumps(engine)).__dict__  # its thread stays in this process


def test_a_runner_on_a_background_engine_gives_the_sync_results_and_keeps_a_failed_batch_to_its_scans(
        tiny_dataset, tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    scans = sorted((tiny_dataset / "images").glob("*.tif"))[:5]
    summaries, engines = {}, {"sync": TorchCPUEngine(bundle), "background": BackgroundEngine(bundle),
                              "failing": BackgroundEngine(bundle, fail_on_call=4)}
    for label, engine in engines.items():
        summaries[label] = process_scans(scans, tmp_path / f"{label}.zarr",
                                         passes=[SegmentPass.of_engine(engine, bundle, OPTIONS)], options=OPTIONS,
                                         table=tmp_path / f"{label}.csv")
    assert [o.status for o in summaries["background"].outcomes] == ["ok"] * 5
    sync, background = (zarr.open_group(str(tmp_path / f"{k}.zarr"), mode="r") for k in ("sync", "background"))
    for outcome in summaries["sync"].outcomes:
        np.testing.assert_array_equal(_level0(background[outcome.group], "mask"), _level0(sync[outcome.group], "mask"))
    assert [o.adhesive_ratio for o in summaries["background"].outcomes] == \
        [o.adhesive_ratio for o in summaries["sync"].outcomes]
    failing = summaries["failing"].outcomes
    statuses = [o.status for o in failing]
    assert 1 <= statuses.count("error") <= 2, statuses  # the scans the failed batch held (3 tiles straddle two)
    assert all("failed on the engine's thread" in o.error for o in failing if o.status == "error")
    for got, want in zip(failing, summaries["sync"].outcomes):
        if got.status == "ok":
            assert got.adhesive_ratio == want.adhesive_ratio


@pytest.mark.parametrize("depth", [1, 3])
def test_stream_scans_yields_in_input_order_only_once_a_scans_batches_are_merged(depth, tiny_dataset, tiny_bundle,
                                                                                  tmp_path):
    from semtile.inference.run import stream_scans

    bundle = load_bundle(tiny_bundle)
    scans = sorted((tiny_dataset / "images").glob("*.tif"))[:6]
    engine = DeferredEngine(bundle, depth)
    passes = [SegmentPass.of_engine(engine, bundle, OPTIONS)]
    yielded = []
    for job in stream_scans(scans, passes, OPTIONS, tmp_path / "scratch"):
        assert job.error is None and job.maps and not job.mergers, job.path
        # Nothing still queued on the engine holds this job: every batch it was cut into was collected.
        yielded.append(job.path)
        job.release()
    assert yielded == scans and not engine.queued


def test_a_caller_that_stops_early_leaves_every_prepared_job_released(tiny_dataset, tiny_bundle, tmp_path, monkeypatch):
    from semtile.inference import run as run_module

    released: list = []
    original = run_module.ScanJob.release

    def release(self):
        released.append(self.path)
        original(self)

    monkeypatch.setattr(run_module.ScanJob, "release", release)
    bundle = load_bundle(tiny_bundle)
    scans = sorted((tiny_dataset / "images").glob("*.tif"))[:6]
    engine = DeferredEngine(bundle, 3)
    jobs = run_module.stream_scans(scans, [SegmentPass.of_engine(engine, bundle, OPTIONS)], OPTIONS,
                                   tmp_path / "scratch")
    first = next(jobs)
    assert first.path == scans[0]
    jobs.close()  # the caller stops: ended, prepared and in-flight jobs are dropped, not leaked
    seen = set(released)
    assert first.path not in seen  # the caller's own job is the caller's to release
    prepared = seen | {first.path}
    assert len(released) == len(seen)  # none released twice
    assert prepared <= set(scans) and len(prepared) >= 2

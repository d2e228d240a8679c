"""The device pass (cut, infer, blend, judge on one torch device) against the CPU path, on torch's CPU device.

The CPU path is :func:`~semtile.inference.one_image.run_pass` (tiles read by
``read_windows``, blended by the Numba kernel) then
:meth:`SegmentPass.judge_region` and :meth:`SegmentPass.finish`. The device
pass must give the same blended mask (so the same stored uint8 probability),
the same binary mask, counts, logits, label and ratio. The CUDA variant runs
where a GPU is visible and skips otherwise.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from semtile.engines.torch_cpu import TorchCPUEngine
from semtile.execution.local import process_scans
from semtile.inference.device_pass import (
    _at_least,
    device_jobs,
    device_pass_chosen,
    encode_probability_uint8,
    encode_probability_uint8_torch,
    judge_on_device,
)
from semtile.inference.merge import BlendMerger
from semtile.inference.one_image import run_array, run_pass
from semtile.inference.options import ProcessOptions
from semtile.inference.segment import SegmentPass
from semtile.models.io import load_bundle
from semtile.results import open_results

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def engine(bundle):
    return TorchCPUEngine(bundle)


def scan(shape, seed=0) -> np.ndarray:
    """A smooth random scan in [0, 1]: structure the tiny model answers to, not only noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((shape[0] // 8 + 2, shape[1] // 8 + 2), dtype=np.float32)
    image = np.kron(coarse, np.ones((8, 8), np.float32))[: shape[0], : shape[1]]
    return np.clip(image + 0.1 * rng.standard_normal(shape, dtype=np.float32), 0, 1).astype(np.float32)


def cpu_path(image, p, engine):
    maps, vectors = run_pass(image, p, runner=p.build_runner())
    judged = p.judge_region(maps)
    return maps["mask"], judged, vectors, p.finish(judged.counts, vectors, p.rule.grid(image.shape), {})


def assert_same_as_cpu(image, p, engine, got, want_mask, want, want_vectors, want_result):
    assert got.arrays["mask"].dtype == np.uint8
    # The blend is ordered as the Numba kernel's: the stored probability is equal, not only within 1 count.
    np.testing.assert_array_equal(got.arrays["mask"], encode_probability_uint8(want_mask))
    np.testing.assert_array_equal(got.arrays["binary_mask"], want.arrays["binary_mask"])
    assert got.counts["adhesive"] == want.counts["adhesive"] and got.counts["pixels"] == want.counts["pixels"]
    assert got.counts["mask_sum"] == pytest.approx(want.counts["mask_sum"], rel=1e-12)
    np.testing.assert_array_equal(got.vectors["logits"], want_vectors["logits"])
    result = p.finish(got.counts, got.vectors, got.grid, {})
    assert result.fields["label"] == want_result.fields["label"]
    assert result.fields["adhesive_ratio"] == want_result.fields["adhesive_ratio"]  # exactly
    np.testing.assert_array_equal(result.fields["class_probs"], want_result.fields["class_probs"])
    assert set(got.timings) == {"upload", "cut", "infer", "blend", "judge", "download"}


@pytest.mark.parametrize("shape, tile, halo, batch", [
    ((128, 160), 64, 8, 3),   # edges not a multiple of the core, batches straddling tile rows
    ((48, 200), 64, 16, 1),   # fewer rows than a tile: windows wider than the image (repeated reflection)
    ((144, 96), 32, 8, 8),    # core 16: rows a multiple of the core, halo at tile/4 (ramps meeting)
    ((37, 41), 64, 0, 2),     # no halo: no overlap at all
])
def test_device_pass_equals_the_cpu_path(shape, tile, halo, batch, bundle, engine):
    image = scan(shape, seed=sum(shape))
    options = ProcessOptions(tile=tile, halo=halo, batch_size=batch)
    # The threshold: a value the blended mask takes (its median), so pixels sit exactly on it.
    blended = run_pass(image, SegmentPass.of_engine(engine, bundle, options))[0]["mask"]
    p = SegmentPass.of_engine(engine, bundle, replace(options, threshold=float(np.sort(blended.ravel())[blended.size // 2])))
    want_mask, want, want_vectors, want_result = cpu_path(image, p, engine)
    got = judge_on_device(image, p, runner=p.build_runner(), device="cpu")
    assert_same_as_cpu(image, p, engine, got, want_mask, want, want_vectors, want_result)
    assert 0 < want.counts["adhesive"] < want.counts["pixels"]  # the threshold cut through the mask
    floats = judge_on_device(image, p, runner=p.build_runner(), device="cpu", mask_dtype="float32")
    np.testing.assert_array_equal(floats.arrays["mask"], want_mask)  # bit for bit, as the Numba blend


def test_threshold_compares_as_numpy_does(bundle, engine):
    """A threshold that float32 rounds down: a mask value equal to that float32 counts exactly as NumPy counts it."""
    for threshold in (0.1, 0.7, np.float64(0.7)):  # float32(0.1) > 0.1, float32(0.7) < 0.7
        t32 = np.float32(threshold)
        values = np.array([np.nextafter(t32, np.float32(0)), t32, np.nextafter(t32, np.float32(1))], np.float32)
        got = _at_least(torch.from_numpy(values), threshold).numpy()
        np.testing.assert_array_equal(got, values >= threshold)


def test_uint8_encoding_rounds_half_to_even_and_clips():
    p = np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.5, 1.0, 1.7, np.nan], np.float32)
    want = encode_probability_uint8(p)
    assert want.tolist()[:2] == [0, 0] and want[-3] == 255 and want[-2] == 255 and want[-1] == 0
    np.testing.assert_array_equal(encode_probability_uint8_torch(torch.from_numpy(p)).numpy(), want)
    rng = np.random.default_rng(1).random(10_000, dtype=np.float32)
    np.testing.assert_array_equal(encode_probability_uint8_torch(torch.from_numpy(rng)).numpy(),
                                  encode_probability_uint8(rng))


def test_the_device_pass_is_chosen_for_torch_cuda_or_on_request(bundle, engine, monkeypatch):
    p = SegmentPass.of_engine(engine, bundle, ProcessOptions(tile=64, halo=8))
    monkeypatch.delenv("SEMTILE_DEVICE_PASS", raising=False)
    assert not device_pass_chosen([p])
    assert device_pass_chosen([p], prefer=True)
    assert not device_pass_chosen([p, p], prefer=True)  # one segment pass only
    monkeypatch.setenv("SEMTILE_DEVICE_PASS", "1")
    assert device_pass_chosen([p])
    cuda = replace(p, engine="torch-cuda")
    monkeypatch.delenv("SEMTILE_DEVICE_PASS")
    assert device_pass_chosen([cuda]) and not device_pass_chosen([cuda], prefer=False)


def test_process_with_the_device_pass_stores_what_the_host_path_stores(tiny_dataset, bundle, engine, tmp_path,
                                                                      monkeypatch):
    scans = sorted((tiny_dataset / "images").glob("*.tif"))[:3]
    options = ProcessOptions(tile=64, halo=8, batch_size=3)
    first = next(device_jobs(scans[:1], [SegmentPass.of_engine(engine, bundle, options)], options,
                             mask_dtype="float32")).judged[0]["mask"]
    options = replace(options, threshold=float(np.median(first)))  # a threshold that cuts through the masks
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not a tiff")
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((8, 300), np.uint8))
    runs = {}
    for label, setting in (("host", "0"), ("device", "1")):
        monkeypatch.setenv("SEMTILE_DEVICE_PASS", setting)
        summary = process_scans([*scans[:2], broken, small, scans[2]], tmp_path / f"{label}.zarr",
                                passes=[SegmentPass.of_engine(engine, bundle, options)], options=options,
                                table=tmp_path / f"{label}.csv")
        assert [o.status for o in summary.outcomes] == ["ok", "ok", "error", "error", "ok"]
        runs[label] = summary
    host, device = (open_results(tmp_path / f"{k}.zarr") for k in ("host", "device"))
    for path in scans:
        a, b = host[Path(path).stem], device[Path(path).stem]
        assert a.label == b.label and a.adhesive_ratio == b.adhesive_ratio and 0 < a.adhesive_ratio < 1
        np.testing.assert_array_equal(np.asarray(a.binary_mask), np.asarray(b.binary_mask))
        mask_a, mask_b = np.asarray(a.mask, np.float32), np.asarray(b.mask, np.float32)
        # Within the stored precision: equal counts of 1/255 (the float mask, where the store keeps floats).
        np.testing.assert_array_equal(encode_probability_uint8(mask_a), encode_probability_uint8(mask_b))
        np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
        assert b.attrs["provenance"]["engine"]["device_pass"] == {
            "device": "cpu", "stages": ["cut", "infer", "blend", "judge"],
            "mask_dtype": getattr(options, "mask_dtype", "float32")}
        assert "device_pass" not in a.attrs["provenance"]["engine"]
    timings = runs["device"].outcomes[0].timings
    assert {"upload", "cut", "infer", "blend", "judge", "download"} <= set(timings)


def test_device_jobs_report_a_bad_scan_and_go_on(tiny_dataset, bundle, engine, tmp_path):
    options = ProcessOptions(tile=64, halo=8, batch_size=4)
    p = SegmentPass.of_engine(engine, bundle, options)
    good = sorted((tiny_dataset / "images").glob("*.tif"))[0]
    jobs = list(device_jobs([tmp_path / "missing.tif", good], [p], options, mask_dtype="uint8"))
    assert jobs[0].error and jobs[1].error is None
    arrays, counts = jobs[1].judged
    assert arrays["mask"].dtype == np.uint8 and counts["segment"]["pixels"] == arrays["mask"].size


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["f32", "fp16"])
def test_device_pass_on_cuda_equals_the_host_blend_of_the_same_engine(precision, bundle):
    """On the GPU: the same engine's tiles blended on the host (Numba) against the device pass."""
    from semtile.engines.torch_cuda import TorchCUDAEngine

    options = ProcessOptions(tile=64, halo=8, batch_size=4)
    cuda = TorchCUDAEngine(bundle, precision=precision, batch_size=4, tile=64)
    p = SegmentPass.of_engine(cuda, bundle, options)
    for shape in ((128, 160), (48, 200), (301, 257)):
        image = scan(shape, seed=shape[1])
        grid = p.rule.grid(shape)
        def infer(tiles):
            out = cuda.run(tiles)
            return {"mask": out.mask_probs, "logits": out.class_logits}

        ref = run_array(image, grid, infer, batch_size=4, merger=BlendMerger(grid), collect=("logits",))
        want = p.judge_region({"mask": ref["mask"]})
        got = judge_on_device(image, p, runner=p.build_runner())
        assert got.device.startswith("cuda")
        stored = encode_probability_uint8(ref["mask"]).astype(np.int16)
        delta = np.abs(got.arrays["mask"].astype(np.int16) - stored)
        assert delta.max() <= 1
        scaled = ref["mask"].astype(np.float64) * 255
        away = np.abs(scaled - np.floor(scaled) - 0.5) > 1e-4 * 255
        assert np.all(delta[away] == 0)
        np.testing.assert_array_equal(got.arrays["binary_mask"], want.arrays["binary_mask"])
        assert got.counts["adhesive"] == want.counts["adhesive"]
        np.testing.assert_array_equal(got.vectors["logits"], ref["logits"])

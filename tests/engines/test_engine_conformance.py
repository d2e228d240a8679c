"""One conformance suite for every engine available here, on the built-in model's real weights.

Each engine processes the same synthetic scans through the real pipeline and
is compared with PyTorch fp32 (the reference): probabilities, binary masks,
adhesive ratios and predicted labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from semtile.engines import AUTO_ORDER, EngineSettings, available_engines, create_engine
from semtile.execution.local import ProcessOptions, analyse_scan
from semtile.inference.sampling import calibration_tiles
from semtile.inference.segment import SegmentPass
from semtile.models.io import load_bundle
from semtile.synth import SynthConfig, write_dataset

CASES = [("torch-cpu", "bf16"), ("onnxruntime", "f32"), ("openvino", "f32"), ("openvino", "bf16"),
         ("openvino", "int8"), ("torch-cuda", "fp16"), ("torch-cuda", "bf16"), ("tensorrt", "fp16")]
TOLERANCE = {"f32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}  # int8: INT8_BOUNDS below
OPTIONS = ProcessOptions(tile=256, halo=32, batch_size=8)
# int8 (OpenVINO + NNCF post-training quantisation of the segmenter, calibrated on these scans) cannot
# meet the float tolerance; it is held to bounds on |int8 - f32| over the 1,728,000 probabilities of
# the scans below. Measured (deterministic over repeated runs) with openvino 2026.4, nncf 3.4 on an
# "AMD EPYC" (lscpu Model name; 2 vCPUs, AVX2/FMA, no AVX-512, VNNI, AMX or native bf16): mean 0.00182,
# p99 0.0338, p99.9 0.0828, max 0.2995 (binary agreement 0.99862, adhesive ratio within 0.00058).
# Bounds are the measured values times about 1.5, room for other CPUs' int8 kernels and for float
# layers run in native bf16 (bf16 alone, torch-cpu-bf16 here, reaches p99.9 0.018, max 0.040).
INT8_BOUNDS = {"mean": 0.003, "p99": 0.05, "p99.9": 0.125, "max": 0.45}


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SEMTILE_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    out = tmp_path_factory.mktemp("conformance")
    # Labels spread over the whole range, 480x640 like the demo.
    write_dataset(out, SynthConfig(per_label=1, labels=16, size=(480, 640), truth="sqrt", seed=99))
    return sorted((out / "images").glob("*.tif"))[::3]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


@pytest.fixture(scope="module")
def reference(scans, bundle, tmp_path_factory):
    engine, _ = create_engine("torch-cpu", bundle, EngineSettings(precision="f32"))
    scratch = tmp_path_factory.mktemp("scratch")
    return [analyse_scan(path, [SegmentPass.of_engine(engine, bundle, OPTIONS)], OPTIONS, scratch)[0] for path in scans]


@pytest.mark.slow
@pytest.mark.parametrize("name,precision", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_engine_matches_pytorch_fp32(name, precision, scans, bundle, reference, tmp_path):
    ok, why = available_engines()[name]
    if not ok:
        pytest.skip(f"{name} not available here: {why}")
    calibration = calibration_tiles(scans, OPTIONS) if precision == "int8" else None
    engine, _ = create_engine(name, bundle, EngineSettings(precision=precision), calibration_tiles=calibration)
    assert engine.describe()["precision"] == precision
    results = [analyse_scan(path, [SegmentPass.of_engine(engine, bundle, OPTIONS)], OPTIONS, tmp_path)[0] for path in scans]
    tol = TOLERANCE.get(precision)
    diffs = np.concatenate([np.abs(r.mask - ref.mask).ravel() for r, ref in zip(results, reference)])
    agreement = np.mean([np.mean(r.binary_mask == ref.binary_mask) for r, ref in zip(results, reference)])
    ratio_err = max(abs(r.adhesive_ratio - ref.adhesive_ratio) for r, ref in zip(results, reference))
    assert agreement >= 0.995, f"binary masks agree on {agreement:.4f} of pixels"
    assert ratio_err <= 0.005, f"adhesive ratio differs by {ratio_err:.4f}"
    class_err = max(float(np.abs(r.class_probs - ref.class_probs).max()) for r, ref in zip(results, reference))
    assert class_err <= 2e-2, f"class probabilities differ by {class_err:.3g}"
    # Labels identical wherever the reference's decision is not a near tie (the median
    # rule's cumulative probability within 0.01 of 1/2): a tie may fall either way.
    for r, ref in zip(results, reference):
        cumulative = np.cumsum(ref.class_probs)
        if np.min(np.abs(cumulative[:-1] - 0.5)) > 0.01:
            assert r.label == ref.label, f"{r.source.name}: label {r.label} != {ref.label}"
    if precision == "f32":
        assert diffs.max() <= tol, f"max probability difference {diffs.max():.3g} > {tol}"
        return
    # Reduced precision: measured on the built-in model, bf16 stays within 2e-2 on all but
    # about one pixel in a thousand (max ~0.04).
    p999 = float(np.quantile(diffs, 0.999))
    if precision == "int8":
        measured = {"mean": float(diffs.mean()), "p99": float(np.quantile(diffs, 0.99)), "p99.9": p999,
                    "max": float(diffs.max())}
        for stat, bound in INT8_BOUNDS.items():
            assert measured[stat] <= bound, f"int8 probabilities: {stat} difference {measured[stat]:.3g} > {bound}"
        return
    assert p999 <= tol, f"99.9th percentile probability difference {p999:.3g} > {tol}"
    assert diffs.max() <= 3 * tol, f"max probability difference {diffs.max():.3g} > {3 * tol}"


def test_auto_picks_the_first_available_in_order(bundle):
    found = available_engines()
    expected = next(n for n in AUTO_ORDER if found[n][0])
    engine, why = create_engine("auto", bundle, EngineSettings())
    assert engine.name == expected and expected in why

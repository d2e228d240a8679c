"""The torch-cuda and tensorrt engines against the CPU reference.

GPU tests run only where CUDA (and, for TensorRT, ``import tensorrt``) works;
the CPU-only tests always run: the modules import without a GPU, the
availability probes say why not and the engines refuse clearly. The fp16
ONNX conversion used for TensorRT is tested in tests/models/test_fp16.py.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from semtile.engines.torch_cpu import TorchCPUEngine
from semtile.errors import SemtileError
from semtile.models.export import export_model
from semtile.models.io import load_bundle, save_model
from semtile.models.networks import Architecture, build_model

HAS_CUDA = torch.cuda.is_available()
try:
    import tensorrt  # noqa: F401

    HAS_TENSORRT = True
except Exception:  # noqa: BLE001 - missing or broken install
    HAS_TENSORRT = False

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
needs_tensorrt = pytest.mark.skipif(not (HAS_CUDA and HAS_TENSORRT), reason="needs TensorRT and a CUDA device")

TILE = 64  # a multiple of 2**d = 4
N_TILES = 11  # not a multiple of any batch size used below: partial final chunks


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised classifier + segmenter, exported with ONNX at TILE."""
    folder = tmp_path_factory.mktemp("gpu-bundle")
    torch.manual_seed(0)
    for kind in ("classifier", "segmenter"):
        arch = Architecture(kind, c=8, d=2, n=1, N=1)
        network = build_model(arch)
        with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode BN is exercised
            for module in network.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
        save_model(network, arch, list(range(arch.n_labels)), folder / f"{kind}.pt")
    export_model(load_bundle(folder), folder, tile=TILE, halo=8)
    return folder


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(42).random((N_TILES, TILE, TILE), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(bundle, tiles):
    return TorchCPUEngine(bundle).run(tiles)


def assert_close(got, want, *, probs_atol: float, logits_tol: float) -> None:
    assert got.class_logits.dtype == np.float32 and got.mask_probs.dtype == np.float32
    assert got.class_logits.shape == want.class_logits.shape
    assert got.mask_probs.shape == want.mask_probs.shape
    np.testing.assert_allclose(got.mask_probs, want.mask_probs, atol=probs_atol, rtol=0)
    np.testing.assert_allclose(got.class_logits, want.class_logits, atol=logits_tol, rtol=logits_tol)


# -- CPU-only: always run ----------------------------------------------------------------------


def test_modules_import_without_gpu_or_tensorrt():
    torch_cuda = importlib.import_module("semtile.engines.torch_cuda")
    trt_module = importlib.import_module("semtile.engines.tensorrt")
    assert torch_cuda.TorchCUDAEngine.name == "torch-cuda"
    assert trt_module.TensorRTEngine.name == "tensorrt"
    # Importing the module must not import tensorrt itself (it is loaded lazily).
    code = "import sys, semtile.engines.tensorrt, semtile.engines.torch_cuda; print('tensorrt' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_availability_probes_give_reasons():
    from semtile.engines.tensorrt import tensorrt_available
    from semtile.engines.torch_cuda import torch_cuda_available

    ok, reason = torch_cuda_available()
    assert ok is HAS_CUDA and isinstance(reason, str) and reason
    ok, reason = tensorrt_available()
    assert isinstance(reason, str) and reason
    assert ok is (HAS_CUDA and HAS_TENSORRT)
    if not HAS_TENSORRT:
        assert "not installed" in reason


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal where CUDA is missing")
def test_torch_cuda_engine_refuses_without_cuda(bundle):
    from semtile.engines.torch_cuda import TorchCUDAEngine

    with pytest.raises(SemtileError, match="needs a CUDA GPU"):
        TorchCUDAEngine(bundle)


@pytest.mark.skipif(HAS_CUDA and HAS_TENSORRT, reason="checks the refusal where TensorRT or CUDA is missing")
def test_tensorrt_engine_refuses_without_tensorrt_or_cuda(bundle_dir, tmp_path):
    from semtile.engines.tensorrt import TensorRTEngine

    match = "TensorRT is not installed" if not HAS_TENSORRT else "needs a CUDA GPU"
    with pytest.raises(SemtileError, match=match):
        TensorRTEngine(bundle_dir, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was built or cached


def test_engines_reject_bad_options_before_looking_for_a_gpu(bundle, bundle_dir, tmp_path):
    """Anything a user can get wrong is a SemtileError, whether or not this machine has a GPU."""
    from semtile.engines.tensorrt import TensorRTEngine
    from semtile.engines.torch_cuda import TorchCUDAEngine

    with pytest.raises(SemtileError, match="torch-cuda engine runs fp16, bf16, f32, not 'int4'"):
        TorchCUDAEngine(bundle, precision="int4")
    with pytest.raises(SemtileError, match="batch size of at least 1"):
        TorchCUDAEngine(bundle, batch_size=0, tile=TILE)
    with pytest.raises(SemtileError, match="positive multiple of 4"):
        TorchCUDAEngine(bundle, tile=TILE + 2)
    with pytest.raises(SemtileError, match="tensorrt engine runs fp16, f32, int8, not 'bf8'"):
        TensorRTEngine(bundle_dir, precision="bf8", cache_dir=tmp_path)
    with pytest.raises(SemtileError, match="batch size 64, max_batch 32"):
        TensorRTEngine(bundle_dir, opt_batch=64, max_batch=32, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_tensorrt_cache_defaults_under_semtile_cache(monkeypatch, tmp_path):
    from semtile.engines.tensorrt import default_cache_dir

    monkeypatch.setenv("SEMTILE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tensorrt"
    monkeypatch.delenv("SEMTILE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "semtile" / "tensorrt"


# -- torch-cuda --------------------------------------------------------------------------------


def _bf16_supported() -> bool:
    from semtile.engines.torch_cuda import bf16_supported

    return HAS_CUDA and bf16_supported()


@pytest.fixture
def no_tf32(monkeypatch):
    """f32 on the GPU means f32: turn TF32 off for this test only (it is a global PyTorch setting)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16", "f32"])
def test_torch_cuda_matches_cpu(bundle, tiles, reference, precision, request):
    from semtile.engines.torch_cuda import TorchCUDAEngine

    if precision == "bf16" and not _bf16_supported():
        pytest.skip("this GPU has no bf16 support")
    if precision == "f32":
        request.getfixturevalue("no_tf32")
    engine = TorchCUDAEngine(bundle, precision=precision, batch_size=4, tile=TILE)
    got = engine.run(tiles)  # 11 tiles: two full chunks and a padded partial one
    tol = 1e-3 if precision == "f32" else 2e-2
    assert_close(got, reference, probs_atol=tol, logits_tol=tol if precision == "f32" else 5e-2)
    info = engine.describe()
    assert info["name"] == "torch-cuda" and info["precision"] == precision and info["cuda_graphs"] is True
    assert {"device_name", "compute_capability", "batch_size", "torch"} <= info.keys()


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_bf16_refused_where_unsupported(bundle):
    from semtile.engines.torch_cuda import TorchCUDAEngine

    if _bf16_supported():
        pytest.skip("this GPU supports bf16")
    with pytest.raises(SemtileError, match="bf16"):
        TorchCUDAEngine(bundle, precision="bf16", tile=TILE)


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_partial_batch_and_empty(bundle, tiles, reference):
    from semtile.engines.torch_cuda import TorchCUDAEngine

    engine = TorchCUDAEngine(bundle, precision="fp16", batch_size=8, tile=TILE)
    got = engine.run(tiles[:3])
    assert got.class_logits.shape == (3, 16) and got.mask_probs.shape == (3, TILE, TILE)
    assert_close(got, type(reference)(reference.class_logits[:3], reference.mask_probs[:3]),
                 probs_atol=2e-2, logits_tol=5e-2)
    empty = engine.run(np.zeros((0, TILE, TILE), np.float32))
    assert empty.class_logits.shape == (0, 16) and empty.mask_probs.shape == (0, TILE, TILE)


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_graph_equals_eager(bundle, tiles):
    from semtile.engines.torch_cuda import TorchCUDAEngine

    graphed = TorchCUDAEngine(bundle, precision="fp16", batch_size=4, tile=TILE, cuda_graphs=True)
    eager = TorchCUDAEngine(bundle, precision="fp16", batch_size=4, tile=TILE, cuda_graphs=False)
    assert graphed.describe()["cuda_graphs"] is True and eager.describe()["cuda_graphs"] is False
    a, b = graphed.run(tiles), eager.run(tiles)
    np.testing.assert_allclose(a.mask_probs, b.mask_probs, atol=2e-3, rtol=0)
    np.testing.assert_allclose(a.class_logits, b.class_logits, atol=5e-3, rtol=5e-3)
    again = graphed.run(tiles)  # replaying is repeatable
    np.testing.assert_array_equal(again.mask_probs, a.mask_probs)


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_other_tile_size_runs_eagerly(bundle):
    from semtile.engines.torch_cuda import TorchCUDAEngine

    engine = TorchCUDAEngine(bundle, precision="fp16", batch_size=4, tile=TILE)
    big = np.random.default_rng(5).random((5, 2 * TILE, 2 * TILE), dtype=np.float32)
    got = engine.run(big)
    assert engine.describe()["eager_batches"] == 1
    assert_close(got, TorchCPUEngine(bundle).run(big), probs_atol=2e-2, logits_tol=5e-2)
    with pytest.raises(ValueError, match="multiple"):
        engine.run(np.zeros((1, TILE + 2, TILE + 2), np.float32))


# -- tensorrt ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trt_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trt-cache")


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp16", "f32"])
def test_tensorrt_matches_cpu(bundle_dir, tiles, reference, trt_cache, precision):
    from semtile.engines.tensorrt import TensorRTEngine

    engine = TensorRTEngine(bundle_dir, precision=precision, max_batch=8, opt_batch=4, cache_dir=trt_cache)
    got = engine.run(tiles)  # chunks of 4 alternating between two streams, partial last chunk
    tol = 1e-3 if precision == "f32" else 2e-2
    assert_close(got, reference, probs_atol=tol, logits_tol=tol if precision == "f32" else 5e-2)
    one = engine.run(tiles[:1])  # the minimum of the profile
    assert_close(one, type(reference)(reference.class_logits[:1], reference.mask_probs[:1]),
                 probs_atol=tol, logits_tol=tol if precision == "f32" else 5e-2)
    info = engine.describe()
    assert info["name"] == "tensorrt" and info["precision"] == precision and info["tile"] == TILE
    assert info["profile"]["opt"] == [4, 1, TILE, TILE] and info["profile"]["max"] == [8, 1, TILE, TILE]
    assert {"tensorrt", "device_name", "compute_capability", "engine_cache"} <= info.keys()
    with pytest.raises(ValueError, match="built for"):
        engine.run(np.zeros((1, 2 * TILE, 2 * TILE), np.float32))
    if precision == "f32":  # the old spelling is an alias: same engine, same cache entry
        alias = TensorRTEngine(bundle_dir, precision="fp32", max_batch=8, opt_batch=4, cache_dir=trt_cache)
        assert alias.describe()["precision"] == "f32" and all(alias.loaded_from_cache.values())


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_through_the_registry_admits_large_batches(bundle, tiles, reference, monkeypatch, tmp_path):
    from semtile.engines import EngineSettings, create_engine

    monkeypatch.setenv("SEMTILE_CACHE", str(tmp_path))
    engine, _ = create_engine("tensorrt", bundle, EngineSettings(tile=TILE, halo=8, batch_size=64))
    info = engine.describe()
    assert info["precision"] == "fp16" and info["profile"]["max"] == [64, 1, TILE, TILE]
    assert info["engine_cache"]["segmenter"]["path"].startswith(str(tmp_path / "tensorrt"))
    assert_close(engine.run(tiles), reference, probs_atol=2e-2, logits_tol=5e-2)


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_engine_cache_is_reused(bundle_dir, tiles, tmp_path):
    from semtile.engines.tensorrt import TensorRTEngine

    start = time.perf_counter()
    first = TensorRTEngine(bundle_dir, precision="fp16", max_batch=8, opt_batch=4, cache_dir=tmp_path)
    first_seconds = time.perf_counter() - start
    assert first.loaded_from_cache == {"classifier": False, "segmenter": False}
    assert all(path.is_file() for path in first.engine_paths.values())
    assert first.timing_cache_path.is_file()

    start = time.perf_counter()
    second = TensorRTEngine(bundle_dir, precision="fp16", max_batch=8, opt_batch=4, cache_dir=tmp_path)
    second_seconds = time.perf_counter() - start
    assert second.loaded_from_cache == {"classifier": True, "segmenter": True}
    assert second.cache_keys == first.cache_keys
    assert second_seconds < first_seconds
    a, b = first.run(tiles), second.run(tiles)
    np.testing.assert_allclose(a.mask_probs, b.mask_probs, atol=1e-6, rtol=0)

    # Another profile is another key; a corrupt cached engine is rebuilt, not fatal.
    other = TensorRTEngine(bundle_dir, precision="fp16", max_batch=16, opt_batch=4, cache_dir=tmp_path)
    assert set(other.cache_keys.values()).isdisjoint(first.cache_keys.values())
    first.engine_paths["segmenter"].write_bytes(b"not a TensorRT engine")
    rebuilt = TensorRTEngine(bundle_dir, precision="fp16", max_batch=8, opt_batch=4, cache_dir=tmp_path)
    assert rebuilt.loaded_from_cache == {"classifier": True, "segmenter": False}
    np.testing.assert_allclose(rebuilt.run(tiles).mask_probs, a.mask_probs, atol=2e-2, rtol=0)


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_int8_needs_qdq_models(bundle_dir, tmp_path):
    from semtile.engines.tensorrt import TensorRTEngine

    with pytest.raises(SemtileError, match="int8"):
        TensorRTEngine(bundle_dir, precision="int8", cache_dir=tmp_path)

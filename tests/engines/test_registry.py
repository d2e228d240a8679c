"""The engine table (semtile.engines.registry) and the refusal of bad option combinations.

Bad engine/precision pairs and bad settings are SemtileErrors raised from the
table alone, before any backend is probed or built, so they behave the same
on every machine; through the real CLI they exit with code 2 and one line.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import semtile.engines.registry as registry
from semtile.engines import (
    AUTO_ORDER,
    ENGINE_NAMES,
    GRADIENT_ENGINES,
    EngineSettings,
    available_engines,
    create_engine,
    engines_for,
    is_gpu_engine,
    pick_engine,
    resolve_engine,
    torch_device,
)
from semtile.engines.registry import ENGINES, PRECISIONS, REGISTRY, EngineEntry, check_options
from semtile.errors import SemtileError

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {  # what each backend runs, and its precision for "auto", as the engines implement them
    "tensorrt": ({"f32", "fp16", "int8"}, "fp16"),
    "torch-cuda": ({"f32", "bf16", "fp16"}, "fp16"),
    "openvino": ({"f32", "bf16", "int8"}, None),  # bf16 where the CPU has native bf16, else f32
    "onnxruntime": ({"f32"}, "f32"),
    "torch-cpu": ({"f32", "bf16"}, "f32"),
}
UNSUPPORTED = [(e.name, p) for e in REGISTRY for p in PRECISIONS if p not in e.precisions]
DEFECT_EXPECTED = {"openvino": {"f32", "bf16"}, "onnxruntime": {"f32"}, "torch-cpu": {"f32"}}  # as before the registry


@pytest.fixture(scope="module")
def bundle():
    from semtile.models.io import load_bundle

    return load_bundle()


@pytest.fixture(scope="module")
def autoencoder():
    """A small defect model in memory (card tile 64), as ``load_model`` gives one."""
    from semtile.models.io import LoadedModel
    from semtile.models.networks import DefectArchitecture, build_model

    arch = DefectArchitecture("autoencoder", c=4, normalise="fixed")
    return LoadedModel(network=build_model(arch).eval(), arch=arch, labels=[], card={"tile": 64},
                       path=Path("ae.pt"), sha256="0" * 64)


@pytest.fixture
def no_probing(monkeypatch, tmp_path):
    """Fail the test if anything is probed or built; keep any export out of the user's cache."""
    monkeypatch.setenv("SEMTILE_CACHE", str(tmp_path / "cache"))

    def forbidden(*args, **kwargs):
        raise AssertionError("probed or built before the options were checked")

    monkeypatch.setattr(registry, "_probe", forbidden)
    monkeypatch.setattr(registry, "available_engines", forbidden)
    yield
    assert not (tmp_path / "cache").exists()


@pytest.fixture
def machine(monkeypatch):
    """A pretend machine: ``machine({"openvino", ...})`` makes exactly those backends available.

    Builders record what they were asked for instead of building; the table keeps its order and precisions.
    """
    built = []

    def install(available: set[str]):
        def fake(entry: EngineEntry) -> EngineEntry:
            def build(bundle, settings, calibration_tiles):
                built.append((entry.name, settings))
                return entry.name

            ok = entry.name in available
            default = entry.default if isinstance(entry.default, str) else "f32"  # openvino: no real probe
            return dataclasses.replace(entry, probe=lambda: (ok, "fake " + ("yes" if ok else "absent")),
                                       build=build, default=default)

        table = tuple(fake(e) for e in REGISTRY)
        monkeypatch.setattr(registry, "REGISTRY", table)
        monkeypatch.setattr(registry, "ENGINES", {e.name: e for e in table})
        return built

    return install


# -- the table ---------------------------------------------------------------------------------


def test_table_matches_auto_order_and_the_engines():
    assert tuple(e.name for e in REGISTRY) == AUTO_ORDER == ("tensorrt", "torch-cuda", "openvino", "onnxruntime",
                                                             "torch-cpu")
    assert ENGINE_NAMES == ("auto", *AUTO_ORDER) and list(ENGINES) == list(AUTO_ORDER)
    assert PRECISIONS == ("f32", "bf16", "fp16", "int8")
    for entry in REGISTRY:
        precisions, default = EXPECTED[entry.name]
        assert set(entry.precisions) == precisions and set(entry.precisions) <= set(PRECISIONS)
        assert callable(entry.probe) and callable(entry.build)
        if default is not None:
            assert entry.default == default == entry.auto_precision()
        assert entry.describe_default()
    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY[0].precisions = ("f32",)  # type: ignore[misc]


def test_table_says_the_kinds_the_gpu_and_the_gradients_of_every_engine():
    for entry in REGISTRY:
        assert "bundle" in entry.kinds and entry.precisions_for("bundle") == entry.precisions
        assert set(entry.precisions_for("autoencoder")) == DEFECT_EXPECTED.get(entry.name, set())
        assert ("vae" in entry.kinds) == ("patch-classifier" in entry.kinds) == (entry.name in DEFECT_EXPECTED)
        assert is_gpu_engine(entry.name) == entry.gpu == (entry.name in ("tensorrt", "torch-cuda"))
        assert entry.gradients == (entry.name in ("torch-cuda", "torch-cpu"))
    assert not is_gpu_engine("auto") and not is_gpu_engine("nonsense")
    assert engines_for("bundle") == AUTO_ORDER
    assert engines_for("autoencoder") == engines_for("vae") == engines_for("patch-classifier") == (
        "openvino", "onnxruntime", "torch-cpu")  # the anomaly pass's order, fastest first
    assert set(GRADIENT_ENGINES) == {"torch-cpu", "torch-cuda"}
    with pytest.raises(SemtileError, match="unknown model kind 'segmenter'"):
        engines_for("segmenter")


def test_every_precision_has_an_engine_and_openvino_default_fits():
    for precision in PRECISIONS:
        assert any(precision in e.precisions for e in REGISTRY), precision
    if available_engines()["openvino"][0]:
        assert ENGINES["openvino"].auto_precision() in ("bf16", "f32")


def test_importing_the_engines_does_not_import_torch():
    code = "import sys, semtile.engines, semtile.engines.registry; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_available_engines_reports_every_backend_in_one_line():
    found = available_engines()
    assert list(found) == list(AUTO_ORDER) and found["torch-cpu"][0] is True
    for ok, why in found.values():
        assert isinstance(ok, bool) and why and "\n" not in why


# -- bad combinations: SemtileError from the table, nothing probed or built --------------------


@pytest.mark.parametrize("name,precision", UNSUPPORTED, ids=[f"{n}-{p}" for n, p in UNSUPPORTED])
def test_unsupported_precision_is_refused_before_probing(bundle, no_probing, name, precision):
    accepted = ", ".join(ENGINES[name].precisions)
    with pytest.raises(SemtileError) as info:
        create_engine(name, bundle, EngineSettings(precision=precision))
    message = str(info.value)
    assert f"engine {name} does not run precision {precision}: it runs {accepted}" in message
    assert "\n" not in message


@pytest.mark.parametrize("name,precision,match", [
    ("nonsense", "auto", "unknown engine 'nonsense': choose one of auto, tensorrt"),
    ("auto", "int4", "unknown precision 'int4': choose one of auto, f32, bf16, fp16, int8"),
    ("torch-cpu", "fp64", "unknown precision 'fp64'"),
    ("onnxruntime", "bf16", "engine onnxruntime does not run precision bf16: it runs f32 .*bf16 runs on "
                            "torch-cuda, openvino, torch-cpu"),
    ("torch-cuda", "int8", "engine torch-cuda does not run precision int8: it runs f32, bf16, fp16 .*int8 runs "
                           "on tensorrt, openvino"),
    ("torch-cpu", "half", "engine torch-cpu does not run precision fp16"),  # aliases are checked as well
    ("openvino", "fp16", "engine openvino does not run precision fp16: it runs f32, bf16, int8"),
])
def test_bad_names_and_pairs(bundle, no_probing, name, precision, match):
    with pytest.raises(SemtileError, match=match):
        create_engine(name, bundle, EngineSettings(precision=precision))


@pytest.mark.parametrize("settings,match", [
    (EngineSettings(batch_size=0), "batch size must be at least 1"),
    (EngineSettings(tile=100), "tile 100 must be a positive multiple of 16"),
    (EngineSettings(halo=-1), "halo must not be negative"),
    (EngineSettings(threads=0), "threads must be at least 1"),
])
def test_bad_settings_are_refused_before_probing(bundle, no_probing, settings, match):
    with pytest.raises(SemtileError, match=match):
        create_engine("torch-cpu", bundle, settings)


@pytest.mark.parametrize("name,precision,match", [
    ("tensorrt", "auto", "engine tensorrt does not run autoencoder models: choose auto or one of openvino, "
                         "onnxruntime, torch-cpu"),
    ("torch-cuda", "fp16", "engine torch-cuda does not run autoencoder models"),
    ("openvino", "int8", "engine openvino does not run precision int8 for autoencoder models: it runs f32, bf16 "
                         ".*int8 runs on no engine"),
    ("torch-cpu", "bf16", "engine torch-cpu does not run precision bf16 for autoencoder models: it runs f32 .*bf16 "
                          "runs on openvino"),
])
def test_defect_models_are_refused_what_their_engines_do_not_run(autoencoder, no_probing, name, precision, match):
    with pytest.raises(SemtileError, match=match):
        create_engine(name, autoencoder, EngineSettings(precision=precision))


def test_a_lone_network_or_compile_is_refused_for_defect_engines(bundle, autoencoder, no_probing):
    with pytest.raises(SemtileError, match="not a lone classifier"):
        create_engine("torch-cpu", bundle.classifier)
    with pytest.raises(SemtileError, match="torch.compile applies to bundles"):
        create_engine("torch-cpu", autoencoder, EngineSettings(compile="default"))
    with pytest.raises(SemtileError, match="tile 60 must be a positive multiple of 8"):
        create_engine("onnxruntime", autoencoder, EngineSettings(tile=60))


def test_aliases_are_canonical():
    assert [check_options("tensorrt", p) for p in ("fp32", "FP16", "half")] == ["f32", "fp16", "fp16"]
    assert check_options("torch-cuda", "bfloat16") == "bf16" and check_options("auto", "auto") == "auto"


# -- probing, auto and building (a pretend machine) ----------------------------------------------


def test_an_absent_engine_says_why(bundle, machine):
    machine({"openvino", "onnxruntime", "torch-cpu"})
    with pytest.raises(SemtileError, match="engine tensorrt is not available here: fake absent"):
        create_engine("tensorrt", bundle, EngineSettings(batch_size=64))


def test_auto_picks_the_fastest_engine_that_runs_the_precision(bundle, machine):
    built = machine({"openvino", "onnxruntime", "torch-cpu"})
    assert create_engine("auto", bundle)[0] == "openvino"
    engine, why = create_engine("auto", bundle, EngineSettings(precision="bf16"))
    assert engine == "openvino" and "runs bf16" in why and "not available: tensorrt: fake absent" in why
    with pytest.raises(SemtileError, match="no engine available here runs precision fp16 .*runs on tensorrt, "
                                           "torch-cuda; not available: tensorrt: fake absent"):
        create_engine("auto", bundle, EngineSettings(precision="fp16"))
    built.clear()
    machine({"onnxruntime", "torch-cpu"})
    engine, why = create_engine("auto", bundle, EngineSettings(precision="bf16"))
    assert engine == "torch-cpu" and "available but not running bf16: onnxruntime" in why
    assert [(n, s.precision) for n, s in built] == [("torch-cpu", "bf16")]
    with pytest.raises(SemtileError, match="no engine available here runs precision int8"):
        create_engine("auto", bundle, EngineSettings(precision="int8"))


def test_auto_precision_is_resolved_before_building(bundle, machine):
    built = machine(set(AUTO_ORDER))
    for name, want in (("tensorrt", "fp16"), ("torch-cuda", "fp16"), ("onnxruntime", "f32"), ("torch-cpu", "f32")):
        create_engine(name, bundle)
        assert built[-1] == (name, EngineSettings(precision=want))


def test_auto_for_a_defect_model_picks_among_the_engines_that_run_it(autoencoder, machine):
    built = machine(set(AUTO_ORDER))  # a GPU machine: the bundle would go to tensorrt
    assert create_engine("auto", autoencoder)[0] == "openvino"
    assert built[-1] == ("openvino", EngineSettings(tile=64, precision="f32"))  # the card's tile
    assert pick_engine("auto", kind="autoencoder") == ("openvino", "auto: openvino is the fastest available (fake yes)")
    machine({"onnxruntime", "torch-cpu"})
    name, why = pick_engine(kind="vae")
    assert name == "onnxruntime"
    assert why == "auto: onnxruntime is the fastest available (fake yes); not available: openvino: fake absent"
    assert pick_engine("torch-cpu", kind="autoencoder") == ("torch-cpu", "asked for (fake yes)")
    assert resolve_engine("auto", "f32", kind="patch-classifier")[:2] == ("onnxruntime", "f32")
    machine({"torch-cpu"})
    assert pick_engine("auto", kind="autoencoder")[0] == "torch-cpu"
    assert pick_engine("auto")[0] == "torch-cpu"
    with pytest.raises(SemtileError, match="engine openvino is not available here: fake absent"):
        pick_engine("openvino", kind="autoencoder")


def test_torch_device_for_heat_maps(monkeypatch):
    import torch

    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        device = "cuda" if cuda else "cpu"
        assert torch_device("auto")[0] == device and torch_device("torch-cpu") == ("cpu", "torch-cpu as asked")
        device_, why = torch_device("openvino")
        assert device_ == device and "heat maps need gradients, which openvino cannot give" in why
    assert torch_device("torch-cuda") == ("cuda", "torch-cuda as asked")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SemtileError, match="--engine torch-cuda: no CUDA device is available here"):
        torch_device("torch-cuda")


def test_tensorrt_profile_admits_the_batch_size(bundle, monkeypatch, tmp_path):
    """The registry's TensorRT build raises max_batch to the batch size (no GPU needed: the engine is faked)."""
    import semtile.engines.tensorrt as trt_module

    calls = []
    monkeypatch.setattr(trt_module, "TensorRTEngine", lambda folder, **kw: calls.append((folder, kw)) or "trt")
    monkeypatch.setattr(registry, "_exported", lambda bundle, settings: tmp_path)
    for batch, max_batch in ((64, 64), (8, 32), (32, 32), (33, 33)):
        assert ENGINES["tensorrt"].build(bundle, EngineSettings(batch_size=batch, precision="fp16"), None) == "trt"
        assert calls[-1] == (tmp_path, {"precision": "fp16", "opt_batch": batch, "max_batch": max_batch, "tile": 256, "device": 0})


def test_cpu_engines_build_for_real(bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("SEMTILE_CACHE", str(tmp_path))
    tiles = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
    reference = create_engine("torch-cpu", bundle, EngineSettings(tile=64, halo=8))[0].run(tiles)
    engine, why = create_engine("onnxruntime", bundle, EngineSettings(tile=64, halo=8, precision="fp32"))
    assert engine.describe()["precision"] == "f32" and why.startswith("asked for (onnxruntime")
    np.testing.assert_allclose(engine.run(tiles).mask_probs, reference.mask_probs, atol=1e-4, rtol=0)


# -- through the real CLI: exit code 2, one line, no traceback -------------------------------------


@pytest.fixture(scope="module")
def tiny_tiff(tmp_path_factory) -> Path:
    import tifffile

    path = tmp_path_factory.mktemp("cli-input") / "scan.tif"
    tifffile.imwrite(path, (np.random.default_rng(0).random((128, 160)) * 255).astype(np.uint8))
    return path


FOUND = available_engines()
CLI_CASES = [  # (options, message on stderr, skip reason or None)
    (["--engine", "torch-cuda", "--precision", "int8"],
     "engine torch-cuda does not run precision int8: it runs f32, bf16, fp16", None),
    (["--engine", "onnxruntime", "--precision", "bf16"], "engine onnxruntime does not run precision bf16: it runs f32",
     None),
    (["--engine", "torch-cpu", "--precision", "fp16"], "engine torch-cpu does not run precision fp16", None),
    (["--engine", "openvino", "--precision", "fp16"], "engine openvino does not run precision fp16", None),
    (["--engine", "tensorrt", "--precision", "bf16"], "engine tensorrt does not run precision bf16", None),
    (["--engine", "onnxruntime", "--precision", "int8"], "engine onnxruntime does not run precision int8", None),
    (["--engine", "tensorrt", "--batch-size", "64"], "engine tensorrt is not available here: TensorRT is not installed",
     "TensorRT is installed here" if FOUND["tensorrt"][0] else None),
    (["--engine", "torch-cuda"], "engine torch-cuda is not available here",
     "CUDA is available here" if FOUND["torch-cuda"][0] else None),
    (["--precision", "fp16"], "engine auto: no engine available here runs precision fp16",
     "an fp16 engine is available here" if FOUND["tensorrt"][0] or FOUND["torch-cuda"][0] else None),
    (["--tile", "100"], "--tile 100", None),
    (["--engine", "nonsense"], "Invalid value for '--engine'", None),  # click's own check
]


@pytest.mark.parametrize("options,message,skip", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli_refuses_bad_combinations(tiny_tiff, tmp_path, options, message, skip):
    if skip:
        pytest.skip(skip)
    env = dict(os.environ, SEMTILE_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "semtile.cli.main", "process", str(tiny_tiff), "--out", str(tmp_path / "r.zarr"),
               *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not (tmp_path / "r.zarr").exists() and not (tmp_path / "cache").exists()

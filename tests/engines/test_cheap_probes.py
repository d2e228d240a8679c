"""Probing the engines imports no torch where no CUDA engine can run (a CPU wheel, no driver)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from semtile.engines import registry

ROOT = Path(__file__).resolve().parents[2]


def test_resolving_auto_without_cuda_imports_no_torch():
    if registry.no_cuda_here() is None:
        pytest.skip("a CUDA engine might run here: its probe imports torch")
    code = ("import sys; from semtile.engines import available_engines, resolve_engine; "
            "found = available_engines(); resolve_engine('auto'); "
            "print(sorted(m for m in ('torch', 'tensorrt') if m in sys.modules)); print(found['torch-cpu'][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out == ["[]", "True"]


def test_no_cuda_here_reasons(monkeypatch):
    versions = {"torch": "2.13.0+cpu"}
    monkeypatch.setattr(registry, "_installed", lambda name: versions.get(name))
    assert "built without CUDA" in registry.no_cuda_here()
    assert registry._probe_torch_cuda() == (False, registry.no_cuda_here())
    assert registry._probe_tensorrt() == (False, "TensorRT is not installed")
    versions.update(torch="2.13.0+cu128", tensorrt="10.9")
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    monkeypatch.setattr("ctypes.util.find_library", lambda name: None)
    assert "no NVIDIA driver" in registry.no_cuda_here()
    assert registry._probe_tensorrt()[1].startswith("TensorRT is installed but no NVIDIA driver")
    versions.pop("torch")
    assert registry._probe_torch_cpu() == (False, "PyTorch is not installed")

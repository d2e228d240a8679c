"""Shared fixtures of the defect tests: small lattice and copper datasets and tiny models trained on them.

Budgets are tiny (seconds each, one torch thread) but real: the models are
trained by semtile's own training code and the tests check what they learnt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semtile.defects.training import DefectTrainConfig, train_autoencoder, train_patch_classifier
from semtile.models.networks import DefectArchitecture
from semtile.synth import SynthConfig, write_dataset
from semtile.synth.lattice import LatticeConfig, write_lattice_dataset

#: Held-out share large enough that the test split holds 16 defects.
SPLIT = (0.6, 0.2, 0.2)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _own_export_cache(tmp_path, monkeypatch):
    """ONNX exports of the tests' models go to a folder of the test's own, never to ~/.cache."""
    monkeypatch.setenv("SEMTILE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def lattice_data(tmp_path_factory) -> Path:
    """800 lattice patches, 10% with a defect."""
    out = tmp_path_factory.mktemp("lattice")
    write_lattice_dataset(out, LatticeConfig(count=800, defect_fraction=0.1, seed=3))
    return out


@pytest.fixture(scope="session")
def patch_classifier(lattice_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clf") / "clf.pt"
    return train_patch_classifier(lattice_data, out, arch=DefectArchitecture("patch-classifier", c=8),
                                  config=DefectTrainConfig(epochs=2, steps_per_epoch=40, batch_size=32, split=SPLIT))


@pytest.fixture(scope="session")
def lattice_autoencoder(lattice_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ae") / "ae.pt"
    return train_autoencoder(lattice_data, out, arch=DefectArchitecture("autoencoder", c=8), normal_label=0,
                             config=DefectTrainConfig(epochs=2, steps_per_epoch=80, batch_size=16, lr=5e-3, split=SPLIT))


@pytest.fixture(scope="session")
def copper_normal(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("copper-normal")
    write_dataset(out, SynthConfig(per_label=3, labels=2, size=(192, 256), seed=4))
    return out


@pytest.fixture(scope="session")
def copper_defects(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("copper-defects")
    write_dataset(out, SynthConfig(per_label=2, labels=2, size=(192, 256), seed=5, defects=True))
    return out


@pytest.fixture(scope="session")
def copper_autoencoder(copper_normal, tmp_path_factory) -> Path:
    """A tiny autoencoder with fixed normalisation, trained on defect-free copper scans (128-pixel tiles)."""
    out = tmp_path_factory.mktemp("cu-ae") / "cu.pt"
    return train_autoencoder(copper_normal, out, arch=DefectArchitecture("autoencoder", c=4),
                             config=DefectTrainConfig(epochs=2, steps_per_epoch=40, batch_size=16, crop=32, tile=128,
                                                      lr=5e-3))

"""Shared fixtures: small synthetic datasets and a tiny model trained by semtile itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from semtile.models.networks import Architecture
from semtile.science.training import TrainConfig, train_classifier, train_segmenter
from semtile.synth import SynthConfig, write_dataset

from shared_paths import SHARED_DATA, shared_data  # noqa: F401 - re-exported for older imports


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """4 labels x 2 images of 128x160 with masks, labels.csv and truth.csv."""
    out = tmp_path_factory.mktemp("tiny-data")
    write_dataset(out, SynthConfig(per_label=2, labels=4, size=(128, 160), truth="linear", seed=7))
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_dataset) -> Path:
    """A real (if barely trained) classifier + segmenter bundle with d=2: tiles multiple of 4."""
    folder = tmp_path_factory.mktemp("tiny-model")
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, crop=32, seed=0)
    train_segmenter(tiny_dataset, folder / "segmenter.pt", hypothesis="linear",
                    arch=Architecture("segmenter", c=4, d=2, n=1, N=1), config=config)
    train_classifier(tiny_dataset, folder / "classifier.pt",
                     arch=Architecture("classifier", c=4, d=2, n=1, N=1), config=config)
    return folder


@pytest.fixture(autouse=True)
def no_default_dask_client_left_behind(request):
    """A test that leaves a dask.distributed Client as the default makes later local computes ship to it."""
    yield
    try:
        from distributed.client import _get_global_client
    except ImportError:
        return
    client = _get_global_client()
    if client is not None:
        client.close()
        pytest.fail(f"{request.node.nodeid} left a default dask.distributed Client open ({client})")

"""Training, minimal form: weak labels, supervised masks, classifier; seeded and recorded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from semtile.errors import DatasetError, SemtileError
from semtile.models.networks import Architecture
from semtile.science.training import TrainConfig, train_classifier, train_segmenter

TINY = Architecture("segmenter", c=4, d=2, n=1, N=1)
CONFIG = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, crop=32, seed=5)


def test_weak_training_is_seeded_and_recorded(tiny_dataset, tmp_path):
    a = train_segmenter(tiny_dataset, tmp_path / "a.pt", hypothesis="sqrt", arch=TINY, config=CONFIG)
    b = train_segmenter(tiny_dataset, tmp_path / "b.pt", hypothesis="sqrt", arch=TINY, config=CONFIG)
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    card = json.loads((tmp_path / "a.json").read_text())
    assert card["training"]["mode"] == "weak" and card["training"]["hypothesis"] == "sqrt"
    assert len(card["training"]["history"]) == 2
    split = card["training"]["split"]
    assert set(split["train"]).isdisjoint(split["val"]) and len(split["train"]) + len(split["val"]) == 8
    assert card["labels"] == [0, 1, 2, 3]


def test_supervised_training_reads_masks(tiny_dataset, tmp_path):
    path = train_segmenter(tiny_dataset, tmp_path / "s.pt", masks=tiny_dataset / "masks", arch=TINY, config=CONFIG)
    assert json.loads(path.with_suffix(".json").read_text())["training"]["mode"] == "supervised"
    partial = tmp_path / "masks"
    partial.mkdir()
    shutil.copy(next((tiny_dataset / "masks").glob("*.tif")), partial)
    with pytest.raises(DatasetError, match="no mask for"):
        train_segmenter(tiny_dataset, tmp_path / "x.pt", masks=partial, arch=TINY, config=CONFIG)


def test_classifier_and_bad_settings(tiny_dataset, tmp_path):
    path = train_classifier(tiny_dataset, tmp_path / "c.pt", arch=Architecture("classifier", 4, 2, 1, 1), config=CONFIG)
    assert json.loads(path.with_suffix(".json").read_text())["architecture"]["n_labels"] == 4
    with pytest.raises(SemtileError, match="multiple of 4"):
        train_classifier(tiny_dataset, tmp_path / "c.pt", arch=Architecture("classifier", 4, 2, 1, 1),
                         config=TrainConfig(crop=30))
    with pytest.raises(DatasetError, match="labels.csv not found"):
        train_classifier(tmp_path, tmp_path / "c.pt", config=CONFIG)


def test_learned_curve_is_monotone_with_pinned_ends():
    from semtile.science.training import LearnedCurve

    curve = LearnedCurve(6, (0.9, 0.2))
    with torch.no_grad():
        curve.theta.copy_(torch.tensor([3.0, -2.0, 0.0, 1.0, -5.0]))
    g = curve().detach().numpy()
    assert g[0] == pytest.approx(0.9) and g[-1] == pytest.approx(0.2)
    assert (np.diff(g) < 0).all()


def test_learned_hypothesis_trains_and_is_saved(tiny_dataset, tmp_path):
    path = train_segmenter(tiny_dataset, tmp_path / "l.pt", hypothesis="learned", arch=TINY, config=CONFIG)
    card = json.loads(path.with_suffix(".json").read_text())
    g = card["training"]["g"]
    assert len(g) == 4 and g[0] == pytest.approx(1.0) and g[-1] == pytest.approx(0.0, abs=1e-6)
    assert all(a >= b for a, b in zip(g, g[1:]))
    assert "g" in card["training"]["history"][-1]
    assert card["training"]["binary_weight"] == 2.0  # the learned default


def _undecided(path, dataset) -> float:
    """Mean p(1 - p) of a segmenter's mask over the tiny dataset's images."""
    from semtile.io.tiff import open_scan
    from semtile.models.io import load_model

    net = load_model(path, "segmenter").network.eval()
    values = []
    with torch.inference_mode():
        for image in sorted((dataset / "images").glob("*.tif")):
            with open_scan(image) as scan:
                x = np.asarray(scan.valid().compute(), np.float32)
            p = torch.sigmoid(net(torch.from_numpy(x[: x.shape[0] // 4 * 4, : x.shape[1] // 4 * 4].copy())[None, None]))
            values.append(float((p * (1 - p)).mean()))
    return float(np.mean(values))


def test_binary_penalty_pushes_pixels_to_a_decision(tiny_dataset, tmp_path):
    from dataclasses import replace

    config = replace(CONFIG, epochs=3, steps_per_epoch=6, lr=5e-3)
    soft = train_segmenter(tiny_dataset, tmp_path / "soft.pt", hypothesis="learned", binary_weight=0.0, arch=TINY, config=config)
    hard = train_segmenter(tiny_dataset, tmp_path / "hard.pt", hypothesis="learned", binary_weight=20.0, arch=TINY, config=config)
    assert json.loads(hard.with_suffix(".json").read_text())["training"]["binary_weight"] == 20.0
    assert _undecided(hard, tiny_dataset) < 0.5 * _undecided(soft, tiny_dataset)
    with pytest.raises(SemtileError, match="must not be negative"):
        train_segmenter(tiny_dataset, tmp_path / "x.pt", hypothesis="learned", binary_weight=-1.0, arch=TINY, config=CONFIG)


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    from dataclasses import replace

    config = replace(CONFIG, epochs=3)
    straight = train_segmenter(tiny_dataset, tmp_path / "a.pt", hypothesis="sqrt", arch=TINY, config=config)

    steps = []

    def interrupt(n):  # a crash in the middle of the second epoch
        steps.append(n)
        if len(steps) == config.steps_per_epoch + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_segmenter(tiny_dataset, tmp_path / "b.pt", hypothesis="sqrt", arch=TINY, config=config, progress=interrupt)
    assert not (tmp_path / "b.pt").exists() and (tmp_path / "b.ckpt").is_file()
    resumed = train_segmenter(tiny_dataset, tmp_path / "b.pt", hypothesis="sqrt", arch=TINY,
                              config=replace(config, resume=True))
    sa, sb = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    history = json.loads((tmp_path / "b.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_early_stopping(tiny_dataset, tmp_path):
    from dataclasses import replace

    from semtile.synth import SynthConfig, write_dataset

    data = tmp_path / "d"
    write_dataset(data, SynthConfig(per_label=4, labels=2, size=(96, 96), truth="linear", seed=1))
    path = train_segmenter(data, tmp_path / "e.pt", hypothesis="linear", arch=TINY,
                           config=replace(CONFIG, epochs=30, steps_per_epoch=1, lr=1e-6, patience=2))
    history = json.loads(path.with_suffix(".json").read_text())["training"]["history"]
    assert len(history) < 30


class _Line:
    """Batches of y = 2 x for the loop's own test."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def batch(self, size):
        x = torch.from_numpy(self.rng.random((size, 1), dtype=np.float32))
        return x, 2 * x


def test_the_loop_records_metrics_and_keeps_the_best_epoch():
    from semtile.models.training import LoopConfig, Validation, fit, start

    def loss(net, batch):
        x, y = batch
        error = torch.nn.functional.mse_loss(net(x), y)
        return error, {"mae": float((net(x) - y).abs().mean().detach())}

    start(3, threads=1)
    net = torch.nn.Linear(1, 1)
    scores = iter([0.5, 0.9, 0.7])  # higher is better: epoch 2
    seen = {}

    def score(network, device):
        seen[len(seen)] = {k: v.clone() for k, v in network.state_dict().items()}
        return next(scores)

    config = LoopConfig(epochs=3, steps_per_epoch=4, batch_size=8, lr=1e-2, device="cpu")
    result = fit(net, _Line(), loss, config, validation=Validation(score, key="ap", higher_is_better=True))
    assert result.best_epoch == 2 and [h["ap"] for h in result.history] == [0.5, 0.9, 0.7]
    assert all({"train_loss", "train_mae", "seconds"} <= set(h) for h in result.history)
    assert all(torch.equal(net.state_dict()[k], seen[1][k]) for k in seen[1])
    assert not net.training

    # no validation score at all: "skip" ranks no epoch and keeps the last weights
    net = torch.nn.Linear(1, 1)
    result = fit(net, _Line(), loss, config, validation=Validation(lambda n, d: float("nan"), undefined="skip"))
    assert result.best_epoch == 0 and len(result.history) == 3

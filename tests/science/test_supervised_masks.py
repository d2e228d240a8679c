"""A supervised segmenter trained on its own masks: no labels.csv, no made-up classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from PIL import Image

from semtile.errors import DatasetError
from semtile.models.io import load_model
from semtile.models.networks import Architecture
from semtile.science.training import TrainConfig, supervised_loss, train_segmenter
from semtile.science.training_data import MASK_LABEL, load_training_data

TINY = Architecture("segmenter", c=6, d=2, n=1, N=1)


def _blobs(folder, n=6, size=(64, 80), seed=0):
    """Images of bright discs on a dark noisy ground (PNG and TIFF), masks named like them (PNG, stem match)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(n):
        mask = np.zeros(size, bool)
        for _ in range(3):
            cy, cx, r = rng.integers(10, size[0] - 10), rng.integers(10, size[1] - 10), rng.integers(6, 12)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img = np.clip(np.where(mask, 170, 70) + rng.normal(0, 20, size), 0, 255).astype(np.uint8)
        name = f"img{i:02d}"
        if i % 2:
            Image.fromarray(img).save(folder / "images" / f"{name}.png")
        else:
            tifffile.imwrite(folder / "images" / f"{name}.tif", img)
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{name}.png")
    return folder


def test_loss_kinds():
    logits = torch.tensor([[[[4.0, -4.0]]]])
    masks = torch.tensor([[[[1.0, 0.0]]]])
    assert float(supervised_loss(logits, masks, "dice")) < 0.03
    assert float(supervised_loss(logits, 1 - masks, "dice")) > 0.6
    both = supervised_loss(logits, masks, "bce+dice")
    assert float(both) == pytest.approx(float(supervised_loss(logits, masks, "bce") + supervised_loss(logits, masks, "dice")), rel=1e-5)


def test_masks_alone_make_a_dataset(tmp_path):
    data = _blobs(tmp_path / "d")
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(data / "images" / "no_mask.png")  # left out
    loaded = load_training_data(data, TrainConfig(crop=32, split=(0.5, 0.25, 0.25)), masks=data / "masks")
    names = sorted(s.path.name for s in loaded.samples)
    assert names == ["img00.tif", "img01.png", "img02.tif", "img03.png", "img04.tif", "img05.png"]  # masks/ not an image
    assert loaded.labels == [MASK_LABEL] and len(loaded.masks) == 6
    assert sorted(sum(loaded.split.values(), [])) == list(range(6)) and loaded.split["train"]
    assert all(set(np.unique(m)) <= {0.0, 1.0} for m in loaded.masks)
    with pytest.raises(DatasetError, match="none of its .* has a mask"):
        load_training_data(data / "images", TrainConfig(crop=32), masks=tmp_path)  # no masks here
    with pytest.raises(DatasetError, match="labels.csv not found"):  # a classifier still needs labels
        load_training_data(data, TrainConfig(crop=32))


def test_supervised_segmenter_learns_the_masks_without_labels(tmp_path):
    data = _blobs(tmp_path / "d")
    config = TrainConfig(epochs=4, steps_per_epoch=12, batch_size=4, crop=32, lr=1e-2, seed=1, threads=1)
    path = train_segmenter(data, tmp_path / "seg.pt", masks=data / "masks", loss="bce+dice", arch=TINY, config=config)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["training"]["mode"] == "supervised" and card["training"]["loss"] == "bce+dice"
    assert card["labels"] == [MASK_LABEL] and card["training"]["hypothesis"] is None
    model = load_model(path, "segmenter")
    img = tifffile.imread(data / "images" / "img00.tif").astype(np.float32) / 255
    truth = np.asarray(Image.open(data / "masks" / "img00.png")) > 0
    with torch.no_grad():
        p = torch.sigmoid(model.network(torch.from_numpy(img)[None, None]))[0, 0].numpy()
    dice = 2 * ((p > 0.5) & truth).sum() / ((p > 0.5).sum() + truth.sum())
    assert dice > 0.8


def test_train_segmenter_command_with_masks(tmp_path):
    from semtile.cli.main import main

    data = _blobs(tmp_path / "d", n=4)
    out = tmp_path / "seg.pt"
    result = CliRunner().invoke(main, ["train", "segmenter", str(data), "--masks", str(data / "masks"),
                                       "--out", str(out), "--c", "4", "--d", "2", "--n", "1", "--epochs", "1",
                                       "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "32", "--threads", "1"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["training"]["loss"] == "bce"  # the default, as before

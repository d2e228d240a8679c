"""Synthetic surfaces: known truth, determinism, SEM-like artefacts."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.io.tiff import open_scan
from semtile.synth import SynthConfig, databar_height, synth_surface, write_dataset
from semtile.synth.hypotheses import hypothesis_values


def rows_of(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_images_masks_and_tables(tmp_path):
    out = tmp_path / "S"
    result = CliRunner().invoke(main, ["synth", str(out), "--per-label", "2", "--labels", "5",
                                       "--size", "96x128", "--truth", "sqrt", "--seed", "3"])
    assert result.exit_code == 0, result.output
    labels, truth = rows_of(out / "labels.csv"), rows_of(out / "truth.csv")
    assert list(labels[0]) == ["path", "label"] and list(truth[0]) == ["path", "label", "adhesive_ratio"]
    assert len(labels) == len(truth) == 10
    g = hypothesis_values("sqrt", 5)
    for row in truth:
        image = tifffile.imread(out / row["path"])
        mask = tifffile.imread(out / "masks" / row["path"].split("/")[-1])
        assert image.dtype == np.uint8 and image.shape == (96, 128) and mask.shape == image.shape
        bar = databar_height(96)
        ratio = float(row["adhesive_ratio"])
        assert ratio == pytest.approx(mask[: 96 - bar].mean(), abs=1e-6)
        assert ratio == pytest.approx(g[int(row["label"])], abs=1.0 / mask[: 96 - bar].size)
        assert not mask[96 - bar:].any()


def test_same_seed_same_bytes_other_seed_other_image(tmp_path):
    cfg = SynthConfig(per_label=1, labels=3, size=(80, 96), truth="linear", seed=11)
    write_dataset(tmp_path / "a", cfg)
    write_dataset(tmp_path / "b", cfg)
    write_dataset(tmp_path / "c", SynthConfig(per_label=1, labels=3, size=(80, 96), truth="linear", seed=12))
    for name in ("t00_0000.tif", "t01_0000.tif"):
        a = (tmp_path / "a" / "images" / name).read_bytes()
        assert a == (tmp_path / "b" / "images" / name).read_bytes()
        assert a != (tmp_path / "c" / "images" / name).read_bytes()


def test_reader_finds_the_bar_and_pixel_size(tmp_path):
    write_dataset(tmp_path, SynthConfig(per_label=1, labels=2, size=(240, 320), truth="linear", seed=0))
    with open_scan(tmp_path / "images" / "t01_0000.tif") as scan:
        assert scan.info.databar_rows == databar_height(240)
        assert scan.info.pixel_size_m == pytest.approx(1e-7)


def _nodule_scale(image: np.ndarray) -> float:
    """Distance at which the image autocorrelation falls to 1/2: the texture's scale."""
    a = image.astype(np.float64) - image.mean()
    power = np.abs(np.fft.fft2(a)) ** 2
    acf = np.real(np.fft.ifft2(power))[0]
    acf /= acf[0]
    return float(np.argmax(acf < 0.5))


def test_texture_scale_does_not_depend_on_frame_size():
    scales = {}
    for size in ((256, 320), (768, 960)):
        values = []
        for seed in range(4):
            image, mask, bar = synth_surface(np.random.default_rng(seed), size, 1.0)  # all rough
            values.append(_nodule_scale(image[: size[0] - bar]))
        scales[size] = np.mean(values)
    small, large = scales.values()
    assert abs(small - large) <= 1.0


def test_images_vary_beyond_the_label():
    """Two images of one label differ in brightness and contrast: only texture area tells the label."""
    stats = []
    for index in range(6):
        image, _, bar = synth_surface(np.random.default_rng([0, 5, index]), (200, 240), 0.4)
        valid = image[: 200 - bar]
        stats.append((valid.mean(), valid.std()))
    means, stds = np.array(stats).T
    assert means.std() > 3 and stds.std() > 1


def test_table_truth(tmp_path):
    table = tmp_path / "g.csv"
    table.write_text("t,g\n0,0.9\n1,0.5\n2,0.1\n")
    rows = write_dataset(tmp_path / "d", SynthConfig(per_label=1, labels=3, size=(96, 96), truth=f"table:{table}", seed=0))
    assert [round(r["adhesive_ratio"], 2) for r in rows] == [0.9, 0.5, 0.1]

"""The built-in model on fresh synthetic scans: ratios and labels against the known truth."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.models.io import builtin_bundle_dir, load_bundle
from semtile.synth import SynthConfig, write_dataset


def test_builtin_weights_are_plain_state_dicts_with_cards():
    folder = builtin_bundle_dir()
    for name, kind in (("classifier", "classifier"), ("segmenter", "segmenter")):
        state = torch.load(folder / f"{name}.pt", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        card = json.loads((folder / f"{name}.json").read_text())
        assert card["architecture"]["kind"] == kind
    bundle = load_bundle()
    seg = bundle.segmenter.arch
    assert (seg.c, seg.d, seg.n, seg.N) == (32, 4, 2, 1)
    assert bundle.labels == list(range(16))


@pytest.mark.slow
def test_builtin_model_matches_the_truth_on_unseen_surfaces(tmp_path):
    data = tmp_path / "S"
    # One image per label with a seed the model never saw (it was trained on seed 1).
    write_dataset(data, SynthConfig(per_label=1, labels=16, size=(480, 640), truth="sqrt", seed=2024))
    result = CliRunner().invoke(main, ["--log-json", "process", str(data / "images"), "--out", str(tmp_path / "r.zarr")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    with (data / "truth.csv").open(newline="") as handle:
        truth = {r["path"].split("/")[-1]: r for r in csv.DictReader(handle)}
    with (tmp_path / "r.csv").open(newline="") as handle:
        got = {r["path"].split("/")[-1]: r for r in csv.DictReader(handle)}
    assert got.keys() == truth.keys()
    err = np.array([abs(float(got[k]["adhesive_ratio"]) - float(truth[k]["adhesive_ratio"])) for k in truth])
    within_one = np.mean([abs(int(got[k]["label"]) - int(truth[k]["label"])) <= 1 for k in truth])
    assert err.mean() <= 0.05, err
    assert within_one >= 0.75

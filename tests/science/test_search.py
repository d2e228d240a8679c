"""``semtile search`` on a tiny grid: a leaderboard with every architecture scored."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.models.networks import Architecture
from semtile.science.search import parameter_count
from semtile.synth import SynthConfig, write_dataset


@pytest.mark.slow
def test_search_leaderboard(tmp_path):
    data = tmp_path / "d"
    write_dataset(data, SynthConfig(per_label=3, labels=3, size=(96, 128), truth="linear", seed=2))
    out = tmp_path / "s"
    cap = parameter_count(Architecture("classifier", 8, 2, 1, 1, n_labels=3))
    result = CliRunner().invoke(main, ["search", str(data), "--c", "4,8", "--d", "2", "--n", "1", "--N", "1,2",
                                       "--max-params", str(cap), "--out", str(out), "--epochs", "1",
                                       "--steps-per-epoch", "2", "--crop", "32", "--batch-size", "2"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    # c8/N2 exceeds the cap; the three others are trained and scored.
    assert sorted(r["architecture"] for r in rows) == ["c4-d2-n1-N1", "c4-d2-n1-N2", "c8-d2-n1-N1"]
    for r in rows:
        assert 0 <= float(r["val_top1"]) <= 1 and 0 <= float(r["val_within1"]) <= 1 and float(r["tiles_per_s"]) > 0
        assert int(r["params"]) <= cap
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
    assert "| rank |" in (out / "leaderboard.md").read_text()

"""The defect commands: ``semtile train defects``, ``semtile train autoencoder [--vae]``, ``semtile evaluate --defect-model``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from semtile.cli.main import main


@pytest.mark.slow
def test_train_and_evaluate_from_the_command_line(tmp_path, lattice_data, copper_defects, copper_autoencoder):
    runner = CliRunner()
    budget = ["--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "8", "--threads", "1", "--split", "60,20,20"]
    clf = runner.invoke(main, ["train", "defects", str(lattice_data), "--d", "2", "--out", str(tmp_path / "clf.pt"),
                               *budget])
    assert clf.exit_code == 0, clf.output
    assert "test probability: AUC-ROC" in clf.output and (tmp_path / "clf.roc.png").is_file()
    assert json.loads((tmp_path / "clf.json").read_text())["architecture"]["stages"] == 2
    # --stages, the old spelling of --d, still works for one release, with a deprecation warning
    vae = runner.invoke(main, ["--log-text", "train", "autoencoder", str(lattice_data), "--vae", "--normal-label", "0",
                               "--stages", "4", "--out", str(tmp_path / "vae.pt"), *budget])
    assert vae.exit_code == 0, vae.output
    assert "deprecated_option" in vae.output and "--stages is the old spelling of --d" in vae.output
    card = json.loads((tmp_path / "vae.json").read_text())
    assert card["architecture"]["kind"] == "vae" and card["normal_label"] == "0"
    assert card["architecture"]["stages"] == 4
    assert {"max", "mean", "error-max", "error-mean", "latent"} <= set(card["scores"]["test"])

    ev = runner.invoke(main, ["evaluate", str(lattice_data), "--defect-model", str(tmp_path / "clf.pt"),
                              "--out", str(tmp_path / "ev-clf")])
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((tmp_path / "ev-clf" / "metrics.json").read_text())
    assert metrics["images"] == 160 and "test split" in metrics["scope"]  # the held-out split, not all 800
    assert set(metrics["patch"]["probability"]) >= {"auroc", "ap"}

    ev = runner.invoke(main, ["evaluate", str(copper_defects), "--defect-model", str(copper_autoencoder),
                              "--defect-engine", "onnxruntime", "--out", str(tmp_path / "ev-cu")])
    assert ev.exit_code == 0, ev.output
    assert "Pixel AUROC" in ev.output and "PRO" in ev.output
    rows = (tmp_path / "ev-cu" / "per_image.csv").read_text().splitlines()
    assert rows[0] == "path,anomaly_fraction,defect_fraction" and len(rows) == 5

    # Without --defect-model evaluate still wants its labels; a wrong model kind is one line, exit 2.
    missing = runner.invoke(main, ["evaluate", str(tmp_path), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--labels" in missing.output
    wrong = runner.invoke(main, ["evaluate", str(copper_defects), "--defect-model", str(tmp_path / "clf.pt"),
                                 "--out", str(tmp_path / "y")])
    assert wrong.exit_code == 2 and "patch classifier" in wrong.output


def test_the_defect_commands_spell_the_depth_d(tmp_path):
    runner = CliRunner()
    for command in ("defects", "autoencoder"):
        shown = runner.invoke(main, ["train", command, "--help"]).output
        assert "--d INTEGER" in shown and "--stages" not in shown  # the old spelling is hidden
        both = runner.invoke(main, ["train", command, str(tmp_path), "--stages", "2", "--d", "3",
                                    "--out", str(tmp_path / "m.pt")])
        assert both.exit_code == 2 and "give --d only" in both.output
        assert "deprecated_option" not in both.output

"""The science commands: ``hypotheses``, ``search``, ``evaluate``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from semtile.cli.options import int_list, train_config, train_options
from semtile.engines import engines_for
from semtile.errors import SemtileError


@click.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--candidates", default="linear,sqrt,log,learned", show_default=True, help="Comma-separated hypotheses.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--g-range", "g_range", default="1,0", show_default=True, help="HI,LO: g at the first and the last label.")
@click.option("--binary-weight", default=None, type=click.FloatRange(0),
              help="Weight of the penalty on undecided pixels for the learned candidate (default 2).")
@train_options(out=False, c=16, n=1, epochs=12, steps_per_epoch=50)
def hypotheses(data: Path, candidates: str, out: Path, g_range: str, binary_weight: float | None, **kw) -> None:
    """Rank hypotheses g(t) by the validation error of a segmenter trained on each."""
    from semtile.science.hypotheses import parse_g_range
    from semtile.science.ranking import rank_hypotheses

    try:
        arch, config, Architecture = train_config(kw)
        ends = parse_g_range(g_range)
        if ends is None:
            raise SemtileError("--g-range free is not supported: pinned ends keep weak labels from collapsing")
        rows = rank_hypotheses(data, [c.strip() for c in candidates.split(",") if c.strip()], out,
                               arch=Architecture("segmenter", **arch), config=config, g_range=ends,
                               binary_weight=binary_weight)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    for r in rows:
        click.echo(f"{r['rank']}. {r['hypothesis']:12s} val {r['val_error']:.5f}  test {r['test_error']:.5f}")


@click.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--c", "c_values", default="16,32", show_default=True, help="Channel widths to try.")
@click.option("--d", "d_values", default="3,4", show_default=True, help="Pooling stages to try.")
@click.option("--n", "n_values", default="1,2", show_default=True, help="Convolutions per block to try.")
@click.option("--N", "N_values", default="1,2", show_default=True, help="Blocks per stage to try.")
@click.option("--max-params", default=None, type=click.IntRange(1), help="Skip architectures with more parameters.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1))
@click.option("--steps-per-epoch", default=50, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--crop", default=256, show_default=True, type=click.IntRange(16))
@click.option("--lr", default=2e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--split", "split", default=None, help="Train,val,test shares per label (default 80,10,10).")
@click.option("--threads", default=None, type=click.IntRange(1))
def search(data, c_values, d_values, n_values, N_values, max_params, out, epochs, steps_per_epoch, batch_size,
           crop, lr, seed, split, threads) -> None:
    """Grid search over the classifier's (c, d, n, N): a leaderboard (CSV + markdown)."""
    from semtile.io.dataset import parse_split
    from semtile.science.search import search_classifiers
    from semtile.science.training import TrainConfig

    grid = {"c": int_list(c_values, "--c"), "d": int_list(d_values, "--d"),
            "n": int_list(n_values, "--n"), "N": int_list(N_values, "--N")}
    try:
        config = TrainConfig(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, crop=crop,
                             lr=lr, seed=seed, split=parse_split(split), threads=threads)
        search_classifiers(data, out, grid=grid, config=config, max_params=max_params)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo((out / "leaderboard.md").read_text(), nl=False)


# -- defects: `evaluate DATA --defect-model MODEL` scores a defect model (semtile.defects.evaluate) --


def _defect_evaluation_options(func):
    func = click.option("--defect-engine", default="torch-cpu", show_default=True,
                        type=click.Choice(list(engines_for("patch-classifier"))),
                        help="With --defect-model: the engine that runs it.")(func)
    return click.option("--defect-model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                        help="Score this defect model (patch classifier or autoencoder, .pt) on the dataset folder "
                             "given as RESULTS: patch AUC-ROC and AP, pixel AUROC and PRO (--labels not needed).")(func)


def _stored_map_options(func):
    func = click.option("--map", "map_name", default="anomaly", show_default=True,
                        help="With --defect-masks: the stored map to score.")(func)
    return click.option("--defect-masks", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                        help="Score the anomaly maps stored in RESULTS.zarr (`semtile process --anomaly`) against "
                             "the defect masks in this folder (or its defect_masks/), matched by file name: "
                             "pixel AUROC and PRO.")(func)


def _evaluate_stored_maps(results: Path, masks: Path, out: Path, map_name: str) -> None:
    from semtile.defects.evaluate import evaluate_stored_maps

    try:
        evaluate_stored_maps(results, masks, out, map_name=map_name)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo((out / "summary.md").read_text(), nl=False)


def _evaluate_defects(data: Path, model: Path, part: str, out: Path, engine: str) -> None:
    from semtile.defects.evaluate import evaluate_defect_model

    try:
        evaluate_defect_model(data, model, out, part=part, engine=engine)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo((out / "summary.md").read_text(), nl=False)


# -- end defects --


@click.command()
@click.argument("results", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", "labels_csv", required=False, type=click.Path(exists=True, path_type=Path),
              help="labels.csv of the processed images (or their dataset folder): columns path (or file) and label.")
@click.option("--path-column", default=None, help="Column of --labels holding the image paths (default: path, else file).")
@click.option("--label-column", default=None, help="Column of --labels holding the labels (default: label).")
@click.option("--expert", "expert_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="An expert's answers (path,label) to score beside the model.")
@click.option("--split-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A trained model (.pt or its .json card): score only the images of its --part split.")
@click.option("--part", default="test", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="Which split of --split-from to score.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--masks", "masks_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="True masks (named like the images): score the segmenter mask and every heat map "
                   "(`semtile explain`) against them, tau chosen on a validation split.")
@click.option("--tau", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="With --masks: the fixed threshold of the normalised heat maps (003's Algorithm 2).")
@click.option("--val-fraction", default=0.25, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="With --masks: share of the images (by a hash of their names) on which tau is chosen.")
@click.option("--seed", default=0, show_default=True, type=int, help="With --masks: seed of the validation split.")
@_defect_evaluation_options
@_stored_map_options
def evaluate(results: Path, labels_csv: Path, path_column: str | None, label_column: str | None, expert_csv: Path | None, split_from: Path | None, part: str,
             out: Path, masks_dir: Path | None, tau: float, val_fraction: float, seed: int,
             defect_model: Path | None, defect_engine: str, defect_masks: Path | None = None,
             map_name: str = "anomaly") -> None:
    """Score RESULTS.zarr against labels (confusion matrix, accuracy, ±1, MAE in t, masks) and, with
    --masks, every explanation (segmenter mask, Grad-CAM, CAM) against true masks.

    With --defect-model, RESULTS is a dataset folder with defect labels or masks instead.
    With --defect-masks, the anomaly maps stored in RESULTS.zarr are scored against defect masks.
    """
    if defect_model is not None and defect_masks is not None:
        raise click.UsageError("--defect-model scores a model on a dataset, --defect-masks the maps stored in "
                               "a result store: choose one")
    if defect_masks is not None:  # defects: stored anomaly maps
        return _evaluate_stored_maps(results, defect_masks, out, map_name)
    if defect_model is not None:  # defects
        return _evaluate_defects(results, defect_model, part, out, defect_engine)
    if labels_csv is None and masks_dir is None:
        raise click.UsageError("Missing option '--labels' (or '--masks').")
    from semtile.explain.evaluate import evaluate_explanations
    from semtile.science.evaluate import evaluate_store

    damaged: set = set()  # a damaged result is that result's error: scored without it, and exit 1
    try:
        if labels_csv is not None:
            damaged |= set(evaluate_store(results, labels_csv, out, expert_csv=expert_csv, split_from=split_from,
                                          part=part, path_column=path_column,
                                          label_column=label_column).get("damaged") or ())
        if masks_dir is not None:
            damaged |= set(evaluate_explanations(results, masks_dir, out, tau=tau, val_fraction=val_fraction,
                                                 seed=seed).get("damaged") or ())
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    if labels_csv is not None:
        click.echo((out / "summary.md").read_text(), nl=False)
    if masks_dir is not None:
        click.echo((out / "explanations.md").read_text(), nl=False)
    if damaged:
        sys.exit(1)

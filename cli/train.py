"""``semtile train``: the segmenter and the classifier."""

from __future__ import annotations

from pathlib import Path

import click

from semtile.errors import SemtileError

from semtile.cli.options import Progress, train_config, train_options


@click.group()
def train() -> None:
    """Train the segmenter or the classifier on a dataset folder with labels.csv."""


@train.command("segmenter")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--hypothesis", default="sqrt", show_default=True, help="Weak-label curve g(t): linear, sqrt, log or table:FILE.")
@click.option("--g-range", "g_range", default="1,0", show_default=True, help="HI,LO: g at the first and the last label.")
@click.option("--masks", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of per-pixel masks named like the images: supervised training instead of weak labels.")
@click.option("--binary-weight", default=None, type=click.FloatRange(0),
              help="Weight of a penalty on undecided pixels, mean(p(1-p)) (default: 2 for learned, 0 otherwise).")
@train_options()
def train_segmenter_cmd(data: Path, hypothesis: str, g_range: str, masks: Path | None, binary_weight: float | None,
                        out: Path, **kw) -> None:
    """Train a segmenter (weak labels: mean of the mask regressed onto g(t)).

    HYPOTHESIS: linear, sqrt, log, exp, power:K, table:FILE, or learned (a monotone
    g fitted jointly, its ends pinned by --g-range; the decision threshold is then
    calibrated on the ends that lie inside (0, 1) and g read out of the masks).
    """
    from semtile.science.hypotheses import parse_g_range, parse_hypothesis
    from semtile.science.training import train_segmenter

    try:
        arch, config, Architecture = train_config(kw)
        parse_hypothesis(hypothesis)
        ends = parse_g_range(g_range)
        if ends is None:
            raise SemtileError("--g-range free is not supported: pinned ends keep weak labels from collapsing")
        with Progress(config.epochs * config.steps_per_epoch, "training") as progress:
            path = train_segmenter(data, out, hypothesis=hypothesis, masks=masks, g_range=ends, binary_weight=binary_weight,
                                   arch=Architecture("segmenter", **arch), config=config, progress=progress)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {path}")


@train.command("classifier")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@train_options()
def train_classifier_cmd(data: Path, out: Path, **kw) -> None:
    """Train the baseline classifier."""
    from semtile.science.training import train_classifier

    try:
        arch, config, Architecture = train_config(kw)
        with Progress(config.epochs * config.steps_per_epoch, "training") as progress:
            path = train_classifier(data, out, arch=Architecture("classifier", **arch), config=config, progress=progress)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {path}")

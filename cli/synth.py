"""``semtile synth``: synthetic SEM data with exact ground truth."""

from __future__ import annotations

from pathlib import Path

import click

from semtile.errors import SemtileError

from semtile.cli.options import parse_size


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-label", default=12, show_default=True, type=click.IntRange(1), help="Images per label.")
@click.option("--labels", default=16, show_default=True, type=click.IntRange(2), help="Number of labels T.")
@click.option("--size", default="960x1280", show_default=True, help="Frame size ROWSxCOLS (data bar included).")
@click.option("--truth", default="sqrt", show_default=True, help="Adhesive fraction curve: linear, sqrt, log, exp, power:K or table:FILE.")
@click.option("--seed", default=0, show_default=True, type=int)
def synth(out: Path, per_label: int, labels: int, size: str, truth: str, seed: int) -> None:
    """Write synthetic SEM surfaces with ground-truth masks to OUT."""
    from semtile.synth import SynthConfig, write_dataset

    try:
        rows = write_dataset(out, SynthConfig(per_label=per_label, labels=labels, size=parse_size(size), truth=truth, seed=seed))
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {len(rows)} images to {out}")

"""``semtile report``: one HTML page over the results of a store."""

from __future__ import annotations

from pathlib import Path

import click

from semtile.errors import SemtileError


@click.command()
@click.argument("results", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for index.html and its pictures (replaced if it holds an older report).")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, path_type=Path), default=None,
              help="True labels (path,label CSV, or a dataset folder): confusion matrix and ±1 accuracy.")
@click.option("--expert", "expert_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An expert's answers (path,label) to show beside the model's; needs --labels.")
@click.option("--path-column", default=None,
              help="With --labels: the column naming each image (default: path or file).")
@click.option("--label-column", default=None, help="With --labels: the column of the true label (default: label).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The runs' current table when it is not the one beside the store (process --csv).")
@click.option("--title", default=None, help="Page title (default: the store's name).")
@click.option("--workers", default=None, type=click.IntRange(1), help="Processes drawing the pictures of a large run (default: the cores, at most 8).")
def report(results: Path, out: Path, labels_csv: Path | None, expert_csv: Path | None, path_column: str | None,
           label_column: str | None, csv_path: Path | None, title: str | None, workers: int | None) -> None:
    """Write a report of RESULTS.zarr to OUT/index.html: summary, figures, every image, offline."""
    from semtile.report import build_report

    try:
        outcome = build_report(results, out, labels_csv=labels_csv, expert_csv=expert_csv, csv=csv_path,
                               title=title, workers=workers, path_column=path_column, label_column=label_column)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {outcome.index} ({outcome.images} images, {outcome.failures} failing inputs) "
               f"in {outcome.seconds:.1f} s")

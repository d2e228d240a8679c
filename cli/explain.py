"""``semtile explain``: Grad-CAM and CAM heat maps of stored results (PyTorch), written beside the mask."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from semtile.errors import SemtileError

# Every engine name `process` knows (the list is repeated, not imported: importing the engines costs time).
_ENGINES = ["auto", "torch-cpu", "torch-cuda", "openvino", "onnxruntime", "tensorrt"]


@click.command()
@click.argument("results", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--kinds", default="gradcam,cam", show_default=True, help="Heat maps to compute: gradcam, cam.")
@click.option("--class", "class_label", default=None,
              help="Explain this label for every image (default: each image's predicted label).")
@click.option("--names", default=None, help="Only these results (comma-separated names; default: all).")
@click.option("--model", type=click.Path(exists=True, path_type=Path), default=None,
              help="Classifier (.pt) or model folder (default: the one recorded in each result's provenance).")
@click.option("--engine", default="auto", show_default=True, type=click.Choice(_ENGINES),
              help="Heat maps need gradients: they run on torch-cpu or torch-cuda; another engine is refused "
                   "with a note and torch is used.")
@click.option("--batch-size", default=None, type=click.IntRange(1), help="Tiles per pass (default: the run's).")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads for torch.")
@click.option("--region-pixels", default=None, type=click.IntRange(0),
              help="Scans with more pixels are blended out of core, region by region (default: the run's).")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the out-of-core partial sums (default: beside the store).")
@click.option("--force", is_flag=True, help="Recompute maps a result already holds.")
def explain(results, kinds, class_label, names, model, engine, batch_size, threads, region_pixels, scratch,
            force) -> None:
    """Add Grad-CAM and CAM heat maps of the classifier to each result of RESULTS.zarr.

    The tiles are cut again from the normalised image the store keeps, run through
    the classifier on PyTorch (gradients), blended like the mask (no tile-wise
    normalisation) and written into each result as maps `gradcam` and `cam`.
    """
    from semtile.engines import GRADIENT_ENGINES
    from semtile.explain.run import explain_store

    if engine not in ("auto", *GRADIENT_ENGINES):
        click.echo(f"semtile explain: heat maps need gradients, which {engine} cannot give; "
                   "they run on PyTorch (torch-cpu, or torch-cuda where there is a GPU).", err=True)
    chosen = [n.strip() for n in names.split(",") if n.strip()] if names else None

    def show(outcome) -> None:
        if outcome.status == "error":
            click.echo(f"{outcome.name}: error: {outcome.error}", err=True)
        elif outcome.status == "skipped":
            click.echo(f"{outcome.name}: skipped (maps up to date; --force recomputes)")
        else:
            where = " (out of core)" if outcome.out_of_core else ""
            click.echo(f"{outcome.name}: {','.join(outcome.kinds)} for label {outcome.class_label}, "
                       f"{outcome.tiles} tiles, {outcome.seconds:.2f} s{where}")

    try:
        outcomes = explain_store(results, kinds, class_label=class_label, names=chosen, model=model, engine=engine,
                                 batch_size=batch_size, threads=threads, region_pixels=region_pixels,
                                 scratch=scratch, force=force, progress=show)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    done = [o for o in outcomes if o.status == "ok"]
    failed = [o for o in outcomes if o.status == "error"]
    mp, seconds = sum(o.megapixels for o in done), sum(o.seconds for o in done)
    rate = f", {seconds / mp:.2f} s per MP" if mp else ""
    click.echo(f"explained {len(done)}, skipped {len(outcomes) - len(done) - len(failed)}, failed {len(failed)}{rate}")
    if failed:
        sys.exit(1)

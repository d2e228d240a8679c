"""``semtile masks auto``: propose masks for a folder of images by 003's centre-biased selection."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from semtile.errors import SemtileError


@click.group()
def masks() -> None:
    """Masks without a model: `semtile masks auto IMAGES --out MASKS`."""


@masks.command("auto")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the masks.")
@click.option("--alpha", default=1.0, show_default=True, type=click.FloatRange(0), help="Centre bias: S = A (1 - d)^alpha.")
@click.option("--beta", default=0.05, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Minimum area of the chosen candidate, as a share of the image.")
@click.option("--slic-segments", default=8, show_default=True, type=click.IntRange(0),
              help="SLIC segments among the candidates (0: none).")
@click.option("--smooth", default=2.0, show_default=True, type=click.FloatRange(0), help="Gaussian sigma before thresholding.")
def auto(images, out, alpha, beta, slic_segments, smooth) -> None:
    """Propose a mask per image (003, Algorithm 1): among candidate masks (connected components of thresholded
    maps, SLIC segments) the one of highest A (1 - d)^alpha with A > beta H W; the mask is the largest
    component of its inverse. Written to OUT as 8-bit TIFFs named like the images (1 = foreground)."""
    from semtile.explain.propose import propose_masks

    try:
        done = propose_masks(images, out, alpha=alpha, beta=beta, slic_segments=slic_segments, smooth=smooth)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    for d in done:
        if d.error:
            click.echo(f"{d.path}: error: {d.error}", err=True)
        else:
            click.echo(f"{d.path} -> {d.out}: {d.fraction:.3f} of the image, from {d.chosen} ({d.candidates} candidates)")
    failed = sum(1 for d in done if d.error)
    click.echo(f"masks: {len(done) - failed} written, {failed} failed")
    if failed:
        sys.exit(1)

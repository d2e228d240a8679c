"""Model and engine commands: ``engines``, ``export``."""

from __future__ import annotations

from pathlib import Path

import click

from semtile.errors import SemtileError


@click.command()
def engines() -> None:
    """List the inference engines available on this machine, with versions and precision."""
    from semtile.engines import AUTO_ORDER, available_engines

    found = available_engines()
    chosen = next(n for n in AUTO_ORDER if found[n][0])
    for name in AUTO_ORDER:
        ok, why = found[name]
        mark = "*" if name == chosen else " "
        click.echo(f"{mark} {name:12s} {'yes' if ok else 'no ':3s}  {why}")
    click.echo(f"auto picks: {chosen}")


@click.command()
@click.argument("model", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder to write.")
@click.option("--tile", default=256, show_default=True, type=click.IntRange(16))
@click.option("--halo", default=None, type=click.IntRange(0), help="Halo recorded in the bundle (default: tile/8).")
def export(model: Path | None, out: Path, tile: int, halo: int | None) -> None:
    """Export MODEL (default: the built-in model) to a bundle with ONNX files and checksums."""
    from semtile.models.export import export_bundle
    from semtile.models.io import load_bundle

    try:
        folder = export_bundle(load_bundle(model), out, tile=tile, halo=halo)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {folder}")

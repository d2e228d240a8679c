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
@click.argument("model", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder to write.")
@click.option("--tile", default=None, type=click.IntRange(8),
              help="Tile side (default 256; a defect model's: the tile in its card).")
@click.option("--halo", default=None, type=click.IntRange(0), help="Halo recorded in the bundle (default: tile/8).")
def export(model: Path | None, out: Path, tile: int | None, halo: int | None) -> None:
    """Export MODEL (default: the built-in model) to ONNX with checksums, checked against PyTorch.

    MODEL is a model folder (segmenter and classifier), or a defect model's
    weights (.pt with its card: patch classifier, autoencoder or VAE), which is
    exported to OUT/model.onnx. Either is checked against PyTorch on every fast
    engine (OUT/conformance.json).
    """
    from semtile.engines.conformance import write_conformance
    from semtile.models.export import export_model, export_tile
    from semtile.models.io import load_bundle, load_model

    try:
        loaded = load_model(model) if model is not None and model.is_file() else load_bundle(model)
        folder = export_model(loaded, out, tile=tile, halo=halo)
        report = write_conformance(loaded, folder, export_tile(loaded, tile))
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    if report["kind"] == "bundle":
        click.echo(f"wrote {folder}")
    else:
        click.echo(f"wrote {folder / 'model.onnx'} (tile {report['tile']})")
    for engine, entry in report["engines"].items():
        if "error" in entry:
            click.echo(f"  {engine}: not checked ({entry['error']})")
        elif engine != "torch-cpu":
            click.echo(f"  {engine} ({entry['precision']}): max |difference| from PyTorch "
                       f"{entry['max_abs_difference']:.3g} ({entry['max_rel_difference']:.2e} of its largest output)")

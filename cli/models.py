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
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Bundle folder to write (ONNX exports; needed unless --bioimageio is given).")
@click.option("--bioimageio", "package", default=None, type=click.Path(path_type=Path),
              help="Write a bioimage.io 0.5 model package instead: a .zip (or a folder), validated by "
                   "bioimageio.spec (needs semtile[bioimageio]).")
@click.option("--sample", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --bioimageio: the scan its test tensors and cover come from (default: a synthetic "
                   "etched-copper scan).")
@click.option("--tile", default=None, type=click.IntRange(8),
              help="Tile side (default 256; a defect model's: the tile in its card).")
@click.option("--halo", default=None, type=click.IntRange(0), help="Halo recorded in the bundle (default: tile/8).")
def export(model: Path | None, out: Path | None, package: Path | None, sample: Path | None, tile: int | None,
           halo: int | None) -> None:
    """Export MODEL (default: the built-in model) to ONNX with checksums, checked against PyTorch.

    MODEL is a model folder (segmenter and classifier), or a defect model's
    weights (.pt with its card: patch classifier, autoencoder or VAE), which is
    exported to OUT/model.onnx. Either is checked against PyTorch on every fast
    engine (OUT/conformance.json).

    --bioimageio OUT.zip writes MODEL as a bioimage.io 0.5 package instead
    (ONNX and PyTorch state-dict weights, test tensors from semtile's engine,
    a cover), which `semtile process --model OUT.zip`, bioimageio.core,
    ilastik or deepImageJ run.
    """
    if package is not None:
        return _export_bioimageio(model, package, sample, tile, halo, out)
    if out is None:
        raise click.UsageError("give --out FOLDER (ONNX exports) or --bioimageio OUT.zip (a bioimage.io package)")
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


def _export_bioimageio(model: Path | None, package: Path, sample: Path | None, tile: int | None, halo: int | None,
                       out: Path | None) -> None:
    if out is not None:
        raise click.UsageError("--out writes ONNX exports, --bioimageio a package: give one")
    try:
        from semtile.models.bioimageio import require

        require("`semtile export --bioimageio`")
        from semtile.inference.bioimageio.export import export_bioimageio
        from semtile.models.io import load_bundle, load_model

        loaded = load_model(model) if model is not None and model.is_file() else load_bundle(model)
        made = export_bioimageio(loaded, package, tile=tile, halo=halo, sample=sample)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {made.path} ({made.name}; tile {made.tile}, halo {made.halo}; bioimageio.spec: "
               f"{made.validation})")
    for name, digest in made.sha256.items():
        click.echo(f"  {name} sha256 {digest}")

"""``semtile process``: scans in, masks, labels and adhesive ratios out."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from semtile.errors import SemtileError
from semtile.engines import ENGINE_NAMES

from semtile.cli.options import Progress


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Result Zarr store (created or added to).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Per-run table (default: beside the store, results.csv for results.zarr).")
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Model folder with classifier.pt and segmenter.pt (default: the built-in model).")
@click.option("--classifier", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Classifier weights overriding the model folder's.")
@click.option("--segmenter", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Segmenter weights overriding the model folder's.")
@click.option("--engine", "engine_name", default="auto", show_default=True, type=click.Choice(ENGINE_NAMES),
              help="Inference backend; auto picks the fastest available and logs why.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "f32", "bf16", "fp16", "int8"]),
              help="Engine precision (auto: the engine's fastest at parity; int8 calibrates on tiles of these scans).")
@click.option("--tile", default=256, show_default=True, type=click.IntRange(16), help="Tile (window) side in pixels.")
@click.option("--halo", default=None, type=click.IntRange(0), help="Overlap added on each side of a tile core (default: tile/8).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Tiles per engine call.")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Probability above which a pixel is adhesive.")
@click.option("--page", default=0, show_default=True, type=click.IntRange(0), help="Page of multi-page TIFFs.")
@click.option("--databar-rows", default=None, type=click.IntRange(0), help="Data-bar rows at the bottom (default: from metadata or detected).")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads for the engine.")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder for temporary tile stores.")
def process(inputs, out, csv_path, model, classifier, segmenter, engine_name, precision, tile, halo, batch_size,
            threshold, page, databar_rows, threads, scratch) -> None:
    """Segment and classify every SEM scan in INPUTS (files or folders) into OUT.

    Exit code 0 when every image succeeded, 1 when any failed (the others are
    still written), 2 for usage errors.
    """
    from semtile.engines import EngineSettings, check_options, create_engine
    from semtile.logs import get_logger
    from semtile.models.io import load_bundle
    from semtile.execution.local import ProcessOptions, process_scans
    from semtile.inference.sampling import calibration_tiles
    from semtile.io.discover import find_scans
    from semtile.store import default_csv_path

    log = get_logger("semtile.cli")
    try:
        check_options(engine_name, precision)  # a bad engine/precision pair fails before anything is read or built
        scans = find_scans(inputs)
        if not scans:
            raise SemtileError(f"no .tif or .tiff files found in {', '.join(map(str, inputs))}")
        bundle = load_bundle(model, classifier=classifier, segmenter=segmenter)
        options = ProcessOptions(tile=tile, halo=halo, batch_size=batch_size, threshold=threshold,
                                 page=page, databar_rows=databar_rows)
        options.validate(max(bundle.classifier.arch.multiple, bundle.segmenter.arch.multiple))
        calibration = calibration_tiles(scans, options) if precision == "int8" else None
        engine, why = create_engine(engine_name, bundle, EngineSettings(tile=tile, halo=options.halo, batch_size=batch_size,
                                                                        precision=precision, threads=threads),
                                    calibration_tiles=calibration)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    log.info("run_start", images=len(scans), engine=engine.describe(), engine_reason=why,
             model=bundle.source, out=str(out))
    table = csv_path or default_csv_path(out)
    with Progress(len(scans), "images") as progress:
        summary = process_scans(scans, out, engine=engine, bundle=bundle, options=options, table=table,
                                scratch=scratch, on_image=(lambda _: progress(1)) if progress else None)
    failed = summary.failed
    log.info("run_end", images=len(scans), ok=len(scans) - len(failed), failed=len(failed),
             store=str(out), table=str(table))
    for outcome in failed:
        click.echo(f"FAILED {outcome.path}: {outcome.error}", err=True)
    sys.exit(1 if failed else 0)

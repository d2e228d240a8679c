"""``semtile process``: scans in, masks, labels and adhesive ratios out."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from semtile.cli.options import Progress, SectionedCommand, cluster_options, cluster_spec, live_failures, shard_spec
from semtile.engines import ENGINE_NAMES, engines_for
from semtile.errors import SemtileError


@click.command(cls=SectionedCommand)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Result Zarr store (created or added to).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Per-run table (default: beside the store, results.csv for results.zarr).")
@click.option("--model", type=click.Path(exists=True, path_type=Path), default=None,
              help="Model folder with classifier.pt and segmenter.pt (default: the built-in model), or a "
                   "bioimage.io model package (.zip, a folder or its rdf.yaml / bioimageio.yaml; needs "
                   "semtile[bioimageio]).")
@click.option("--classifier", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Classifier weights overriding the model folder's (default: the folder's).")
@click.option("--segmenter", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Segmenter weights overriding the model folder's (default: the folder's).")
@click.option("--engine", "engine_name", default="auto", show_default=True, type=click.Choice(ENGINE_NAMES),
              help="Inference backend; auto picks the fastest available and logs why.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "f32", "bf16", "fp16", "int8"]),
              help="Engine precision (auto: the engine's fastest at parity; int8 calibrates on tiles of these scans).")
@click.option("--tile", default=256, show_default=True, type=click.IntRange(16), help="Tile (window) side in pixels.")
@click.option("--halo", default=None, type=click.IntRange(0), help="Overlap added on each side of a tile core (default: tile // 8).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Tiles per engine call.")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Probability above which a pixel is adhesive.")
@click.option("--mask-dtype", default="uint8", show_default=True, type=click.Choice(["uint8", "float16", "float32"]),
              help="How the probability mask is stored: uint8 round(p * 255) (read back as p in [0, 1]), or float16/float32.")
@click.option("--page", default=0, show_default=True, type=click.IntRange(0), help="Page of multi-page TIFFs.")
@click.option("--databar-rows", default=None, type=click.IntRange(0), help="Data-bar rows at the bottom (default: from metadata or detected).")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads for the engine (default: the engine library's own choice, about one per core; "
                   "on Dask workers, the cores of each worker's share).")
@click.option("--torch-compile", "torch_compile", default=None,
              type=click.Choice(["default", "max-autotune-no-cudagraphs"]),
              help="torch engines: run the networks through torch.compile (Inductor) with this mode "
                   "(default: not compiled).")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for temporary tile stores (default: the system's temporary folder, $TMPDIR or /tmp).")
@click.option("--force", is_flag=True, help="Redo images whose stored result is already up to date (default: skip them).")
@click.option("--keep-existing", is_flag=True,
              help="Skip every image that has a result in the store, whatever it was made with (the opposite of "
                   "--force; to compare settings, write each to its own store; default: off).")
@click.option("--max-pixels", default=None, type=click.IntRange(1),
              help="Refuse a scan whose header claims more pixels (default 2**32: a guard against lying headers).")
@click.option("--host-threads", default=None, type=click.IntRange(1),
              help="Threads that read, decode and normalise scans and write results, beside the engine "
                   "(default: one per core this process may use).")
@click.option("--region-pixels", default=None, type=click.IntRange(0),
              help="Scans whose frame has more pixels are blended region by region, in bounded memory "
                   "(default 16 MP; 0: every scan).")
@click.option("--anomaly", "anomaly_model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An autoencoder or VAE (.pt, `semtile train autoencoder`): also a whole-scan anomaly map per "
                   "scan (stored as the map 'anomaly') and its anomaly fraction (table column anomaly_fraction; "
                   "default: no anomaly map).")
@click.option("--anomaly-threshold", default=None, type=float,
              help="With --anomaly: the pixel threshold of the anomaly fraction (default: the one calibrated in the "
                   "model's card, `semtile train calibrate-anomaly`).")
@click.option("--anomaly-engine", default="auto", show_default=True,
              type=click.Choice(["auto", *engines_for("autoencoder")]),
              help="With --anomaly: its engine (auto: the fastest available CPU engine, f32).")
@cluster_options
def process(inputs, out, csv_path, model, classifier, segmenter, engine_name, precision, tile, halo, batch_size,
            threshold, mask_dtype, page, databar_rows, threads, torch_compile, scratch, force, keep_existing, max_pixels, host_threads, region_pixels, anomaly_model,
            anomaly_threshold, anomaly_engine, **cluster) -> None:
    """Segment and classify every SEM scan in INPUTS (files or folders) into OUT.

    A rerun skips every image whose stored result was made from the same
    input, model, engine precision and parameters (--force redoes them).
    A result made otherwise is replaced, and the run says what it was made
    with ("replaced 2 results made with threshold 0.5 (now 0.3)"; the run
    table's column replaced); --keep-existing keeps every stored result
    instead. A result another run still running made otherwise is never
    replaced: its image is reported as failed, naming that run.

    --anomaly MODEL adds a whole-scan anomaly map (through the same tiled,
    blended path: no seams) and the share of its pixels above the model's
    calibrated threshold to every result.

    Large scans go region by region (bounded memory). --cluster local,
    --cluster slurm, --scheduler-address or --scheduler-file run the work as
    tasks on Dask workers, which write into the store (with a cluster,
    --out and --scratch must be folders every worker sees).

    Exit codes: 0 every image done or skipped, 1 some images failed (the
    others are still written; also a full disk, which stops new work), 2
    usage or setup error (one line), 3 interrupted (SIGTERM or SIGINT, or the
    Dask scheduler lost; finished results are kept, the rest left for a rerun).
    """
    from semtile.io.discover import discover_scans
    from semtile.models.naming import builtin_note, builtin_parts

    if force and keep_existing:
        raise click.UsageError("--force redoes every image, --keep-existing skips every image with a result: "
                               "pick one")
    try:  # the inputs first, before anything heavy is imported: a wrong path fails at once
        shard = shard_spec(cluster)
        where = cluster_spec(cluster)
        found = discover_scans(inputs)
        scans, problems = found.scans, found.problems
        if not scans:
            why = "".join(f"; {path}: {reason}" for path, reason in found.problems)
            raise SemtileError(f"no scans (.tif, .tiff, .png, .jpg, .jpeg) found in {', '.join(map(str, inputs))}{why}")
        if shard is not None:  # a job array's task: its share of the inputs (each problem reported by one task)
            from semtile.execution.shards import assign_shares, share_of
            from semtile.logs import get_logger

            total = len(scans)
            scans = share_of(scans, shard, page)
            mine = set(assign_shares([Path(q) for q, _ in problems], shard.count)[shard.index])
            problems = [(q, why) for q, why in problems if Path(q) in mine]
            get_logger("semtile.process").info("shard", shard=str(shard), inputs=total, share=len(scans),
                                               message=f"share {shard}: {len(scans)} of {total} inputs")
        from semtile.engines import EngineSettings
        from semtile.execution.batch import run_process
        from semtile.inference.options import ProcessOptions

        options = ProcessOptions(tile=tile, halo=halo, batch_size=batch_size, threshold=threshold,
                                 mask_dtype=mask_dtype, page=page, databar_rows=databar_rows, max_pixels=max_pixels, host_threads=host_threads,
                                 **({} if region_pixels is None else {"region_pixels": region_pixels}))
        if torch_compile and engine_name not in ("auto", "torch-cuda", "torch-cpu"):
            raise SemtileError(f"--torch-compile applies to the torch-cuda and torch-cpu engines, not {engine_name!r}")
        settings = EngineSettings(tile=tile, halo=options.halo, batch_size=batch_size, precision=precision,
                                  threads=threads, compile=torch_compile)
        # from the cards, refused here (nothing written yet); the weights load only when there is work
        passes = [model_pass(model, classifier, segmenter, engine_name, settings, options, precision, threads,
                             halo)]
        if anomaly_model is not None:
            from semtile.defects.anomaly_pass import anomaly_pass

            passes.append(anomaly_pass(anomaly_model, engine=anomaly_engine, threshold=anomaly_threshold,
                                       batch_size=batch_size, threads=threads))
        elif anomaly_threshold is not None:
            raise SemtileError("--anomaly-threshold goes with --anomaly MODEL")
        with Progress(len(scans), "images") as progress:
            summary = run_process(scans, out, passes=passes, options=options, csv_path=csv_path, scratch=scratch,
                                  force=force, keep_existing=keep_existing, problems=problems,
                                  on_image=(lambda _: progress(1)) if progress else None, cluster=where)
    except SemtileError as exc:  # a setup error: one line, exit 2 (see docs/cli.md, "Exit codes")
        click.echo(f"Error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    builtin = builtin_parts(getattr(passes[0], "provenance", {}))
    for outcome in [] if live_failures() else summary.failed:  # on a terminal each was shown as it failed
        click.echo(f"FAILED {outcome.path}: {outcome.error}", err=True)
    if summary.table_error:
        click.echo(f"WARNING {summary.table_error}", err=True)
    for note in (summary.replaced_note(), summary.kept_note()):
        if note:
            click.echo(note, err=True)
    if summary.stopped:
        click.echo(f"STOPPED {summary.stopped}", err=True)
    done = len(summary.outcomes) - len(summary.failed)
    complete = len(summary.skipped) - len(summary.kept)  # --keep-existing keeps results made otherwise too
    skipped = f"{complete} skipped (already complete)" + (f", {len(summary.kept)} kept (--keep-existing)"
                                                           if summary.kept else "")
    click.echo(f"{done} done, {skipped}, {len(summary.failed)} failed"
               + (f"; interrupted by {summary.interrupted}" if summary.interrupted else "")
               + (f"; {builtin_note(builtin)}" if builtin and done else ""), err=True)
    sys.exit(summary.exit_code)


def model_pass(model, classifier, segmenter, engine_name, settings, options, precision, threads, halo=None):
    """The mask's pass: a bioimage.io package's (``--model PACKAGE``) or the classifier + segmenter's."""
    from semtile.models.bioimageio import is_package

    if model is not None and is_package(model):
        if classifier or segmenter:
            raise SemtileError("--classifier / --segmenter replace parts of a semtile model folder, not of a "
                               f"bioimage.io package ({model})")
        if precision not in ("auto", "f32"):
            raise SemtileError(f"--precision {precision}: bioimage.io packages run at f32")
        from semtile.models.bioimageio import require

        require("`--model PACKAGE` (a bioimage.io model)")
        from semtile.inference.bioimageio.passes import bioimageio_pass

        return bioimageio_pass(model, engine_name, options, tile=options.tile, halo=halo,
                               threads=threads)
    if model is not None and model.is_file():
        raise SemtileError(f"--model {model}: a model folder (classifier.pt, segmenter.pt) or a bioimage.io package "
                           "(.zip, rdf.yaml, bioimageio.yaml)")
    from semtile.inference.segment import segment_pass_of_files

    return segment_pass_of_files(model, classifier, segmenter, engine_name, settings, options)

"""The ``semtile`` command: thin click wrappers over the library."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from semtile import __version__
from semtile.engines import ENGINE_NAMES
from semtile.errors import SemtileError
from semtile.logs import configure_logging


def _size(value: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not ROWSxCOLS, e.g. 960x1280") from None
    if rows < 64 or cols < 64:
        raise click.BadParameter(f"{value!r}: frames must be at least 64x64")
    return rows, cols


@click.group()
@click.version_option(__version__, prog_name="semtile")
@click.option("--log-json/--log-text", default=None, help="Log format (default: JSON unless stderr is a terminal).")
def main(log_json: bool | None) -> None:
    """semtile: batch segmentation and classification of SEM scans."""
    configure_logging(json=log_json)


@main.command()
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
        rows = write_dataset(out, SynthConfig(per_label=per_label, labels=labels, size=_size(size), truth=truth, seed=seed))
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {len(rows)} images to {out}")


def _train_options(**defaults):
    """The training options; ``defaults`` overrides the defaults of a command (its budget)."""
    d = {"c": 32, "d": 4, "n": 2, "N": 1, "epochs": 20, "steps_per_epoch": 50, "batch_size": 8, "crop": 128,
         "lr": 1e-3, "out": True, **defaults}

    def decorate(func):
        options = [
            click.option("--c", "c", default=d["c"], show_default=True, type=click.IntRange(1), help="Channels."),
            click.option("--d", "d", default=d["d"], show_default=True, type=click.IntRange(1), help="Pooling stages."),
            click.option("--n", "n", default=d["n"], show_default=True, type=click.IntRange(1), help="Convolutions per residual block."),
            click.option("--N", "N", default=d["N"], show_default=True, type=click.IntRange(1), help="Residual blocks per stage."),
            click.option("--epochs", default=d["epochs"], show_default=True, type=click.IntRange(1)),
            click.option("--steps-per-epoch", default=d["steps_per_epoch"], show_default=True, type=click.IntRange(1)),
            click.option("--batch-size", default=d["batch_size"], show_default=True, type=click.IntRange(1)),
            click.option("--crop", default=d["crop"], show_default=True, type=click.IntRange(16), help="Random crop side (multiple of 2**d)."),
            click.option("--lr", default=d["lr"], show_default=True, type=float),
            click.option("--seed", default=0, show_default=True, type=int),
            click.option("--threads", default=None, type=click.IntRange(1), help="Torch CPU threads."),
            click.option("--split", "split", default=None, help="Train,val,test shares per label, e.g. 80,10,10 (default) or 40,5,5; a split column in labels.csv wins."),
            click.option("--patience", default=0, show_default=True, type=click.IntRange(0), help="Stop after this many epochs without a better validation loss (0: never)."),
            click.option("--device", default="auto", show_default=True, help="auto (GPU when present), cpu or cuda."),
            click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --out (OUT.ckpt)."),
        ]
        if d["out"]:
            options.insert(0, click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                                           help="Output weights (.pt); a .json card is written beside it."))
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _config(kw: dict):
    from semtile.io.dataset import parse_split
    from semtile.models.networks import Architecture
    from semtile.science.training import TrainConfig

    arch = dict(c=kw.pop("c"), d=kw.pop("d"), n=kw.pop("n"), N=kw.pop("N"))
    config = TrainConfig(split=parse_split(kw.pop("split")),
                         **{k: kw.pop(k) for k in ("epochs", "steps_per_epoch", "batch_size", "crop", "lr", "seed",
                                                   "threads", "patience", "device", "resume")})
    return arch, config, Architecture


class _Progress:
    """A click progress bar on a terminal only; yields an ``advance(n)`` callable or None."""

    def __init__(self, total: int, label: str):
        self.bar = click.progressbar(length=total, label=label, file=sys.stderr) if sys.stderr.isatty() else None

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return (lambda n: self.bar.update(n)) if self.bar else None

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)
        return False


@main.group()
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
@_train_options()
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
        arch, config, Architecture = _config(kw)
        parse_hypothesis(hypothesis)
        ends = parse_g_range(g_range)
        if ends is None:
            raise SemtileError("--g-range free is not supported: pinned ends keep weak labels from collapsing")
        with _Progress(config.epochs * config.steps_per_epoch, "training") as progress:
            path = train_segmenter(data, out, hypothesis=hypothesis, masks=masks, g_range=ends, binary_weight=binary_weight,
                                   arch=Architecture("segmenter", **arch), config=config, progress=progress)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {path}")


@train.command("classifier")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@_train_options()
def train_classifier_cmd(data: Path, out: Path, **kw) -> None:
    """Train the baseline classifier."""
    from semtile.science.training import train_classifier

    try:
        arch, config, Architecture = _config(kw)
        with _Progress(config.epochs * config.steps_per_epoch, "training") as progress:
            path = train_classifier(data, out, arch=Architecture("classifier", **arch), config=config, progress=progress)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {path}")


@main.command()
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
    with _Progress(len(scans), "images") as progress:
        summary = process_scans(scans, out, engine=engine, bundle=bundle, options=options, table=table,
                                scratch=scratch, on_image=(lambda _: progress(1)) if progress else None)
    failed = summary.failed
    log.info("run_end", images=len(scans), ok=len(scans) - len(failed), failed=len(failed),
             store=str(out), table=str(table))
    for outcome in failed:
        click.echo(f"FAILED {outcome.path}: {outcome.error}", err=True)
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--candidates", default="linear,sqrt,log,learned", show_default=True, help="Comma-separated hypotheses.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--g-range", "g_range", default="1,0", show_default=True, help="HI,LO: g at the first and the last label.")
@click.option("--binary-weight", default=None, type=click.FloatRange(0),
              help="Weight of the penalty on undecided pixels for the learned candidate (default 2).")
@_train_options(out=False, c=16, n=1, epochs=12, steps_per_epoch=50)
def hypotheses(data: Path, candidates: str, out: Path, g_range: str, binary_weight: float | None, **kw) -> None:
    """Rank hypotheses g(t) by the validation error of a segmenter trained on each."""
    from semtile.science.hypotheses import parse_g_range
    from semtile.science.ranking import rank_hypotheses

    try:
        arch, config, Architecture = _config(kw)
        ends = parse_g_range(g_range)
        if ends is None:
            raise SemtileError("--g-range free is not supported: pinned ends keep weak labels from collapsing")
        rows = rank_hypotheses(data, [c.strip() for c in candidates.split(",") if c.strip()], out,
                               arch=Architecture("segmenter", **arch), config=config, g_range=ends,
                               binary_weight=binary_weight)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    for r in rows:
        click.echo(f"{r['rank']}. {r['hypothesis']:12s} val {r['val_error']:.5f}  test {r['test_error']:.5f}")


def _int_list(value: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint=name) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{value!r}: positive integers, e.g. 16,32", param_hint=name)
    return values


@main.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--c", "c_values", default="16,32", show_default=True, help="Channel widths to try.")
@click.option("--d", "d_values", default="3,4", show_default=True, help="Pooling stages to try.")
@click.option("--n", "n_values", default="1,2", show_default=True, help="Convolutions per block to try.")
@click.option("--N", "N_values", default="1,2", show_default=True, help="Blocks per stage to try.")
@click.option("--max-params", default=None, type=click.IntRange(1), help="Skip architectures with more parameters.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1))
@click.option("--steps-per-epoch", default=50, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--crop", default=256, show_default=True, type=click.IntRange(16))
@click.option("--lr", default=2e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--split", "split", default=None, help="Train,val,test shares per label (default 80,10,10).")
@click.option("--threads", default=None, type=click.IntRange(1))
def search(data, c_values, d_values, n_values, N_values, max_params, out, epochs, steps_per_epoch, batch_size,
           crop, lr, seed, split, threads) -> None:
    """Grid search over the classifier's (c, d, n, N): a leaderboard (CSV + markdown)."""
    from semtile.io.dataset import parse_split
    from semtile.science.search import search_classifiers
    from semtile.science.training import TrainConfig

    grid = {"c": _int_list(c_values, "--c"), "d": _int_list(d_values, "--d"),
            "n": _int_list(n_values, "--n"), "N": _int_list(N_values, "--N")}
    try:
        config = TrainConfig(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, crop=crop,
                             lr=lr, seed=seed, split=parse_split(split), threads=threads)
        search_classifiers(data, out, grid=grid, config=config, max_params=max_params)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo((out / "leaderboard.md").read_text(), nl=False)


@main.command()
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


@main.command()
@click.argument("model", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder to write.")
@click.option("--tile", default=256, show_default=True, type=click.IntRange(16))
@click.option("--halo", default=None, type=click.IntRange(0), help="Halo recorded in the bundle (default: tile/8).")
def export(model: Path | None, out: Path, tile: int, halo: int | None) -> None:
    """Export MODEL (default: the built-in model) to a bundle with ONNX files and checksums."""
    from semtile.inference.split import default_halo
    from semtile.models.export import export_bundle
    from semtile.models.io import load_bundle

    try:
        folder = export_bundle(load_bundle(model), out, tile=tile, halo=default_halo(tile) if halo is None else halo)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {folder}")


@main.command()
@click.argument("results", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", "labels_csv", required=True, type=click.Path(exists=True, path_type=Path), help="labels.csv (path,label) of the processed images.")
@click.option("--expert", "expert_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="An expert's answers (path,label) to score beside the model.")
@click.option("--split-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A trained model (.pt or its .json card): score only the images of its --part split.")
@click.option("--part", default="test", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="Which split of --split-from to score.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def evaluate(results: Path, labels_csv: Path, expert_csv: Path | None, split_from: Path | None, part: str,
             out: Path) -> None:
    """Score RESULTS.zarr against labels (confusion matrix, accuracy, ±1, MAE in t, masks)."""
    from semtile.science.evaluate import evaluate_store

    try:
        evaluate_store(results, labels_csv, out, expert_csv=expert_csv, split_from=split_from, part=part)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo((out / "summary.md").read_text(), nl=False)


if __name__ == "__main__":
    sys.exit(main())

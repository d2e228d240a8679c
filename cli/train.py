"""``semtile train``: the segmenter and the classifier; the defect models (patch classifier, autoencoder)."""

from __future__ import annotations

from pathlib import Path

import click

from semtile.cli.options import Progress, deprecated_alias, resolve_alias, train_config, train_option, train_options
from semtile.errors import SemtileError


@click.group()
def train() -> None:
    """Train the segmenter, the classifier or a defect model on a dataset folder DATA.

    \b
    DATA is a folder holding labels.csv (or that CSV itself), one row per image:
      path   the image file, relative to the CSV (a column named file is
             taken too; --path-column names another)
      label  its label: integers (ordered, e.g. etching times) or names
             (--label-column names another)
      split  optional: train, val or test (else --split decides)
    Other columns are ignored, so the public lung-cell labels.csv
    (file,label,label_id,...) is used as it is.
    """


@train.command("segmenter")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--hypothesis", default="sqrt", show_default=True, help="Weak-label curve g(t): linear, sqrt, log or table:FILE.")
@click.option("--g-range", "g_range", default="1,0", show_default=True, help="HI,LO: g at the first and the last label.")
@click.option("--masks", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of per-pixel masks named like the images: supervised training instead of weak labels.")
@click.option("--binary-weight", default=None, type=click.FloatRange(0),
              help="Weight of a penalty on undecided pixels, mean(p(1-p)) (default: 2 for learned, 0 otherwise).")
@click.option("--loss", "loss", default="bce", show_default=True, type=click.Choice(["bce", "dice", "bce+dice"]),
              help="With --masks: per-pixel binary cross-entropy, soft Dice, or their sum.")
@train_options()
def train_segmenter_cmd(data: Path, hypothesis: str, g_range: str, masks: Path | None, binary_weight: float | None,
                        loss: str, out: Path, **kw) -> None:
    """Train a segmenter (weak labels: mean of the mask regressed onto g(t)).

    DATA is a folder with labels.csv: columns path (or file) and label, an
    optional split (see `semtile train --help`).

    With --masks DIR: supervised, per pixel, against the masks named like the
    images (same file name or stem). DATA then needs no labels.csv: the images
    of the folder DATA that have a mask are used (a labels.csv, where there is
    one, still gives the split).

    HYPOTHESIS: linear, sqrt, log, exp, power:K, table:FILE, or learned (a monotone
    g fitted jointly, its ends pinned by --g-range; the decision threshold is then
    calibrated on the ends that lie inside (0, 1) and g read out of the masks).
    """
    from semtile.science.hypotheses import parse_g_range, parse_hypothesis
    from semtile.science.training import train_segmenter

    try:
        arch, config, Architecture = train_config(kw)
        parse_hypothesis(hypothesis)
        ends = parse_g_range(g_range)
        if ends is None:
            raise SemtileError("--g-range free is not supported: pinned ends keep weak labels from collapsing")
        with Progress(config.epochs * config.steps_per_epoch, "training") as progress:
            path = train_segmenter(data, out, hypothesis=hypothesis, masks=masks, g_range=ends, binary_weight=binary_weight,
                                   loss=loss, arch=Architecture("segmenter", **arch), config=config, progress=progress)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    _echo_training(path)


@train.command("classifier")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@train_options()
def train_classifier_cmd(data: Path, out: Path, **kw) -> None:
    """Train the baseline classifier on DATA: a folder with labels.csv (path or file, label; see `semtile train --help`)."""
    from semtile.science.training import train_classifier

    try:
        arch, config, Architecture = train_config(kw)
        with Progress(config.epochs * config.steps_per_epoch, "training") as progress:
            path = train_classifier(data, out, arch=Architecture("classifier", **arch), config=config, progress=progress)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    _echo_training(path)


def _echo_training(path: Path) -> None:
    """One line per epoch (losses, validation accuracy where there is one), the best epoch, the weights written."""
    from semtile.models.io import load_model

    training = load_model(path).card.get("training") or {}
    for record in training.get("history") or []:
        figures = [f"{key.replace('_', ' ')} {record[key]:.4f}" for key in ("train_loss", "val_loss", "val_accuracy")
                   if isinstance(record.get(key), (int, float))]
        click.echo(f"epoch {record['epoch']}: " + ", ".join(figures))
    best = training.get("best_epoch")
    click.echo(f"best epoch {best} (its weights are kept)" if best else "no epoch ranked: the last weights are kept")
    click.echo(f"wrote {path}")


# -- defects: the supervised patch classifier and the autoencoder / VAE ------------------


def _defect_options(epochs: int):
    """Options shared by ``train defects`` and ``train autoencoder`` (``epochs``: the command's default budget)."""
    return lambda func: _add_defect_options(func, epochs)


def _add_defect_options(func, epochs: int):
    options = [
        train_option("out"),
        train_option("c", 8, help="Channels of the first stage."),
        train_option("d", 3, type=click.IntRange(1, 6),
                     help="Depth d: stride-2 stages (tiles are multiples of 2**d; the card's architecture.stages)."),
        deprecated_alias("--stages", "--d", type=click.IntRange(1, 6)),
        click.option("--normalise", default="auto", show_default=True, type=click.Choice(["auto", "tile", "fixed"]),
                     help="Input normalisation: each tile by its own statistics, or fixed ones from the training data "
                          "(auto: tile for patches, fixed for whole scans)."),
        train_option("epochs", epochs),
        train_option("steps_per_epoch", 100),
        train_option("batch_size", 32),
        train_option("lr", 2e-3),
        click.option("--jitter", default=0.15, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                     help="Intensity jitter of the augmentation (with flips and 90-degree turns)."),
        train_option("seed"),
        train_option("split"),
        train_option("threads"),
        train_option("device"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _defect_config(kw: dict, **extra):
    from semtile.defects.training import DefectTrainConfig
    from semtile.io.dataset import parse_split

    return DefectTrainConfig(split=parse_split(kw.pop("split")),
                             **{k: kw.pop(k) for k in ("epochs", "steps_per_epoch", "batch_size", "lr", "jitter",
                                                       "seed", "threads", "device")}, **extra)


@train.command("defects")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@_defect_options(epochs=4)
@click.option("--balance", default="sampling", show_default=True, type=click.Choice(["sampling", "weights", "none"]),
              help="Rare defects: balanced batches, a class weight in the loss, or neither.")
@click.option("--positive-share", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="With --balance sampling: share of defect patches in each batch.")
def train_defects_cmd(data: Path, out: Path, c: int, normalise: str, balance: str, positive_share: float,
                      **kw) -> None:
    """Train the supervised patch classifier on DATA (labels 1 = defect, 0 = normal).

    Scored on the held-out test split by AUC-ROC and average precision
    (in the card), with OUT.roc.png and OUT.test.csv beside the weights.
    """
    from semtile.defects.training import train_patch_classifier
    from semtile.models.networks import DefectArchitecture

    try:
        resolve_alias(kw, "--stages", "--d")
        d = kw.pop("d")
        config = _defect_config(kw, balance=balance, positive_share=positive_share)
        arch = DefectArchitecture("patch-classifier", c=c, stages=d, normalise=normalise)
        with Progress(config.epochs * config.steps_per_epoch, "training") as progress:
            path = train_patch_classifier(data, out, arch=arch, config=config, progress=progress)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    _echo_scores(path)


@train.command("autoencoder")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@_defect_options(epochs=8)
@click.option("--vae", is_flag=True, help="A variational autoencoder (its latent term joins the anomaly map).")
@click.option("--normal-label", default=None,
              help="Train on the images with this label only (0 for `semtile synth lattice` data); default: every image.")
@click.option("--latent", default=8, show_default=True, type=click.IntRange(1), help="Bottleneck channels.")
@click.option("--smooth", default=2.0, show_default=True, type=click.FloatRange(0), help="Gaussian sigma (pixels) of the error map.")
@click.option("--beta", default=0.1, show_default=True, type=click.FloatRange(0), help="VAE: weight of the KL term per pixel.")
@click.option("--pool", default="max", show_default=True, type=click.Choice(["max", "mean"]), help="Map -> patch score.")
@train_option("crop", 64, type=click.IntRange(8), help="Whole scans: side of the random training crops (multiple of 2**d).")
@click.option("--tile", default=256, show_default=True, type=click.IntRange(8),
              help="Whole scans: tile of the anomaly map (multiple of 2**d; halo tile // 8).")
@click.option("--fpr", default=0.001, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="False-positive rate on normal validation pixels that the anomaly threshold is calibrated for.")
def train_autoencoder_cmd(data: Path, out: Path, c: int, normalise: str, vae: bool, normal_label: str | None,
                          latent: int, smooth: float, beta: float, pool: str, crop: int, tile: int, fpr: float,
                          **kw) -> None:
    """Train a convolutional autoencoder (or --vae) on the normal images of DATA: an anomaly map per pixel."""
    from semtile.defects.training import train_autoencoder
    from semtile.models.networks import DefectArchitecture

    try:
        resolve_alias(kw, "--stages", "--d")
        d = kw.pop("d")
        config = _defect_config(kw, crop=crop, tile=tile, fpr=fpr)
        arch = DefectArchitecture("vae" if vae else "autoencoder", c=c, stages=d, latent=latent, smooth=smooth,
                                  beta=beta, pool=pool, normalise=normalise)
        with Progress(config.epochs * config.steps_per_epoch, "training") as progress:
            path = train_autoencoder(data, out, arch=arch, config=config, normal_label=normal_label, progress=progress)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    _echo_scores(path)


@train.command("calibrate-anomaly")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("normal", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--fpr", default=0.01, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="False-positive rate: the share of normal pixels allowed above the threshold.")
@click.option("--engine", "engine_name", default="auto", show_default=True,
              type=click.Choice(["auto", "openvino", "onnxruntime", "torch-cpu"]),
              help="Engine of the anomaly maps (auto: the fastest available, f32, as `process --anomaly`).")
@click.option("--page", default=0, show_default=True, type=click.IntRange(0), help="Page of multi-page TIFFs.")
@click.option("--databar-rows", default=None, type=click.IntRange(0), help="Data-bar rows (default: detected).")
def calibrate_anomaly_cmd(model: Path, normal: tuple[Path, ...], fpr: float, engine_name: str, page: int,
                          databar_rows: int | None) -> None:
    """Calibrate MODEL's anomaly threshold on NORMAL scans (files or folders) known to be free of defects.

    The threshold is the value above which a share FPR of the normal scans'
    pixels lie; it is written into the model's card (the weights and their
    sha256 stay) and `semtile process --anomaly MODEL` uses it.
    """
    from semtile.defects.anomaly_pass import calibrate_on_scans
    from semtile.io.discover import discover_scans

    try:
        found = discover_scans(normal)
        if not found.scans:
            raise SemtileError(f"no scans (.tif, .tiff, .png, .jpg, .jpeg) found in {', '.join(map(str, normal))}")
        t = calibrate_on_scans(model, found.scans, fpr, engine=engine_name, page=page, databar_rows=databar_rows)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"anomaly threshold {t['value']:.6g} (FPR {t['fpr']} on {t['images']} normal scans) written to "
               f"the card of {model}")


def _echo_scores(path: Path) -> None:
    from semtile.models.io import load_model
    from semtile.models.kinds import DEFECT_KINDS

    card = load_model(path, expect=DEFECT_KINDS).card
    click.echo(f"wrote {path}")
    test = (card.get("scores") or {}).get("test") or {}
    for name, s in test.items():
        if isinstance(s, dict):
            click.echo(f"test {name}: AUC-ROC {s['auroc']:.4f}  AP {s['ap']:.4f}  ({s['n']} patches, {s['positives']} defects)")
    pixels = (card.get("scores") or {}).get("test_pixels")
    if pixels:
        click.echo(f"test pixels: AUROC {pixels['pixel_auroc']:.4f}  PRO {pixels['pro']:.4f}")
    if card.get("threshold"):
        t = card["threshold"]
        click.echo(f"anomaly threshold {t['value']:.4g} (FPR {t['fpr']} on {t['images']} normal {t['split']} images)")

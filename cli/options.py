"""Options and helpers the command modules share."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def parse_size(value: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not ROWSxCOLS, e.g. 960x1280") from None
    if rows < 64 or cols < 64:
        raise click.BadParameter(f"{value!r}: frames must be at least 64x64")
    return rows, cols


def int_list(value: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint=name) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{value!r}: positive integers, e.g. 16,32", param_hint=name)
    return values


def train_options(**defaults):
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


def cluster_options(func):
    """Where ``semtile process`` runs: this process (default), a Dask cluster started here, or a running one."""
    options = [
        click.option("--cluster", type=click.Choice(["local", "slurm"]), default=None,
                     help="Run on a Dask cluster started here: local worker processes, or SLURM jobs (dask-jobqueue). "
                          "Default: in this process (the fastest on one machine)."),
        click.option("--workers", type=click.IntRange(1), default=None,
                     help="--cluster local: worker processes (default: one per 2 cores)."),
        click.option("--scheduler-address", default=None, help="Join a running Dask scheduler, tcp://HOST:PORT."),
        click.option("--scheduler-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Join the Dask scheduler that wrote this file (dask scheduler --scheduler-file)."),
        click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="--cluster slurm: jobs (one worker each)."),
        click.option("--cores", type=click.IntRange(1), default=4, show_default=True, help="--cluster slurm: CPUs per job (the engine's threads)."),
        click.option("--memory", default="8GB", show_default=True, help="--cluster slurm: memory per job."),
        click.option("--walltime", default="04:00:00", show_default=True, help="--cluster slurm: walltime per job."),
        click.option("--queue", default=None, help="--cluster slurm: partition."),
        click.option("--account", default=None, help="--cluster slurm: account."),
        click.option("--gpus", type=click.IntRange(0), default=0, show_default=True,
                     help="--cluster slurm: GPUs per job (--gres=gpu:N; the worker gets the GPU resource)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def cluster_spec(kw: dict):
    """The ClusterSpec the cluster options ask for (None: in this process); pops them from ``kw``."""
    from semtile.errors import SemtileError
    from semtile.execution.distributed import ClusterSpec

    cluster, workers = kw.pop("cluster"), kw.pop("workers")
    address, scheduler_file = kw.pop("scheduler_address"), kw.pop("scheduler_file")
    slurm = {k: kw.pop(k) for k in ("jobs", "cores", "memory", "walltime", "queue", "account", "gpus")}
    chosen = [name for name, given in (("--cluster", cluster), ("--scheduler-address", address),
                                       ("--scheduler-file", scheduler_file)) if given]
    if len(chosen) > 1:
        raise SemtileError(f"{' and '.join(chosen)}: choose one place to run")
    if workers and cluster != "local":
        raise SemtileError("--workers goes with --cluster local")
    if address:
        return ClusterSpec(kind="address", address=address)
    if scheduler_file:
        if not Path(scheduler_file).is_file():
            raise SemtileError(f"{scheduler_file}: scheduler file not found")
        return ClusterSpec(kind="file", scheduler_file=str(scheduler_file))
    if cluster == "local":
        return ClusterSpec(kind="local", workers=workers)
    if cluster == "slurm":
        return ClusterSpec(kind="slurm", **slurm)
    return None


def train_config(kw: dict):
    from semtile.io.dataset import parse_split
    from semtile.models.networks import Architecture
    from semtile.science.training import TrainConfig

    arch = dict(c=kw.pop("c"), d=kw.pop("d"), n=kw.pop("n"), N=kw.pop("N"))
    config = TrainConfig(split=parse_split(kw.pop("split")),
                         **{k: kw.pop(k) for k in ("epochs", "steps_per_epoch", "batch_size", "crop", "lr", "seed",
                                                   "threads", "patience", "device", "resume")})
    return arch, config, Architecture


class Progress:
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

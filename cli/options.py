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


#: The options the ``semtile train`` commands share, each spelled and described one way: (declarations, settings).
TRAIN_OPTIONS = {
    "out": (("--out",), {"required": True, "type": click.Path(dir_okay=False, path_type=Path),
                         "help": "Output weights (.pt); a .json card is written beside it."}),
    "c": (("--c", "c"), {"type": click.IntRange(1), "help": "Channels: the constant width c."}),
    "d": (("--d", "d"), {"type": click.IntRange(1),
                         "help": "Depth d: stages that halve the resolution (crops and tiles are multiples of 2**d)."}),
    "epochs": (("--epochs",), {"type": click.IntRange(1)}),
    "steps_per_epoch": (("--steps-per-epoch",), {"type": click.IntRange(1)}),
    "batch_size": (("--batch-size",), {"type": click.IntRange(1)}),
    "crop": (("--crop",), {"type": click.IntRange(16), "help": "Random crop side (multiple of 2**d)."}),
    "lr": (("--lr",), {"type": float, "help": "Peak learning rate of the one-cycle schedule (Adam)."}),
    "seed": (("--seed",), {"default": 0, "show_default": True, "type": int,
                           "help": "Seed of the split, the initial weights and the sampling."}),
    "split": (("--split", "split"), {"default": None,
                                     "help": "Train,val,test shares per label, e.g. 80,10,10 (default) or 40,5,5; "
                                             "a split column in labels.csv wins."}),
    "path_column": (("--path-column",), {"default": None,
                                         "help": "Column of labels.csv holding the image paths (default: path, else file)."}),
    "label_column": (("--label-column",), {"default": None,
                                           "help": "Column of labels.csv holding the labels (default: label)."}),
    "threads": (("--threads",), {"default": None, "type": click.IntRange(1), "help": "Torch CPU threads."}),
    "device": (("--device",), {"default": "auto", "show_default": True,
                               "help": "auto (GPU when present), cpu or cuda."}),
}


def train_option(name: str, default=None, **overrides):
    """The ``semtile train`` option ``name`` (a key of :data:`TRAIN_OPTIONS`) with the command's ``default``;
    ``overrides`` change its settings (a narrower range, a help text of the command's network)."""
    decls, settings = TRAIN_OPTIONS[name]
    settings = {**settings, **overrides}
    if default is not None:
        settings.update(default=default, show_default=True)
    return click.option(*decls, **settings)


def deprecated_alias(old: str, new: str, **settings):
    """A hidden option ``old``: the spelling of ``new`` before, still accepted for one release
    (:func:`resolve_alias` folds it into ``new``)."""
    return click.option(old, old.lstrip("-").replace("-", "_"), default=None, hidden=True, **settings)


def resolve_alias(kw: dict, old: str, new: str) -> None:
    """Fold the value of the deprecated option ``old`` (popped from ``kw``) into ``new``, with a one-line
    deprecation warning; ``old`` and ``new`` both given with different values is an error."""
    from semtile.errors import SemtileError
    from semtile.logs import get_logger

    old_key, new_key = old.lstrip("-").replace("-", "_"), new.lstrip("-").replace("-", "_")
    value = kw.pop(old_key)
    if value is None:
        return
    given = click.get_current_context().get_parameter_source(new_key) == click.core.ParameterSource.COMMANDLINE
    if given and kw[new_key] != value:
        raise SemtileError(f"{old} {value} and {new} {kw[new_key]}: {old} is the old spelling of {new}; give {new} only")
    get_logger("semtile.cli").warning("deprecated_option", option=old, instead=new,
                                      note=f"{old} is the old spelling of {new} and goes in the next release")
    kw[new_key] = value


def train_options(**defaults):
    """The training options of the paper's networks; ``defaults`` overrides the defaults of a command (its budget)."""
    d = {"c": 32, "d": 4, "n": 2, "N": 1, "epochs": 20, "steps_per_epoch": 50, "batch_size": 8, "crop": 128,
         "lr": 1e-3, "out": True, **defaults}

    def decorate(func):
        options = [
            train_option("c", d["c"]),
            train_option("d", d["d"]),
            click.option("--n", "n", default=d["n"], show_default=True, type=click.IntRange(1), help="Convolutions per residual block."),
            click.option("--N", "N", default=d["N"], show_default=True, type=click.IntRange(1), help="Residual blocks per stage."),
            train_option("epochs", d["epochs"]),
            train_option("steps_per_epoch", d["steps_per_epoch"]),
            train_option("batch_size", d["batch_size"]),
            train_option("crop", d["crop"]),
            train_option("lr", d["lr"]),
            train_option("seed"),
            train_option("split"),
            train_option("path_column"),
            train_option("label_column"),
            train_option("threads"),
            click.option("--patience", default=0, show_default=True, type=click.IntRange(0), help="Stop after this many epochs without a better validation loss (0: never)."),
            train_option("device"),
            click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --out (OUT.ckpt)."),
        ]
        if d["out"]:
            options.insert(0, train_option("out"))
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


class SectionOption(click.Option):
    """An option listed under its own heading in ``--help`` (``section=``) by a :class:`SectionedCommand`."""

    def __init__(self, *args, section: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.section = section


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options by section: first the common ones (under "Options"), then
    each :class:`SectionOption` heading in the order its first option is declared."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list] = {"Options": []}
        for param in self.get_params(ctx):
            if not isinstance(param, click.Option):
                continue  # arguments are in the usage line
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", None) or "Options", []).append(record)
        for heading, records in sections.items():
            if records:
                with formatter.section(heading):
                    formatter.write_dl(records)


#: The headings of the cluster options in ``semtile process --help``.
CLUSTER_SECTION = "Dask cluster options (default: run in this process)"
SLURM_SECTION = "SLURM options (with --cluster slurm)"
SHARD_SECTION = "Job array options (one share of the inputs per task)"


def cluster_options(func):
    """Where ``semtile process`` runs: this process (default), a Dask cluster started here, or a running one.

    Listed under their own headings by a :class:`SectionedCommand`: the cluster, then the SLURM job options."""
    def dask(*decls, **settings):
        return click.option(*decls, cls=SectionOption, section=CLUSTER_SECTION, **settings)

    def slurm(*decls, **settings):
        return click.option(*decls, cls=SectionOption, section=SLURM_SECTION, **settings)

    options = [
        dask("--cluster", type=click.Choice(["local", "slurm"]), default=None,
             help="Run on a Dask cluster started here: local worker processes, or SLURM jobs (dask-jobqueue). "
                  "Default: in this process (the fastest on one machine)."),
        dask("--workers", type=click.IntRange(1), default=None,
             help="--cluster local: worker processes (default: one per 2 cores)."),
        dask("--scheduler-address", default=None,
             help="Join a running Dask scheduler, tcp://HOST:PORT (default: none)."),
        dask("--scheduler-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
             help="Join the Dask scheduler that wrote this file (dask scheduler --scheduler-file; default: none)."),
        slurm("--jobs", type=click.IntRange(1), default=1, show_default=True, help="Jobs (one worker each)."),
        slurm("--cores", type=click.IntRange(1), default=4, show_default=True, help="CPUs per job (the engine's threads)."),
        slurm("--memory", default="8GB", show_default=True, help="Memory per job."),
        slurm("--walltime", default="04:00:00", show_default=True, help="Walltime per job."),
        slurm("--queue", default=None, help="Partition (default: the cluster's default partition)."),
        slurm("--account", default=None, help="Account (default: your default account)."),
        slurm("--gpus", type=click.IntRange(0), default=0, show_default=True,
              help="GPUs per job (--gres=gpu:N; the worker gets the GPU resource)."),
        slurm("--lifetime", default=None,
              help="Workers retire gracefully after this long (e.g. 3h50m, below --walltime) and new jobs take "
                   "their place: no task is cut by the walltime (default: live until the walltime)."),
        slurm("--lifetime-stagger", default=None,
              help="With --lifetime: each worker's lifetime varies by up to this much (e.g. 5m), so they do not "
                   "all retire at once (default: none)."),
        slurm("--interface", default=None,
              help="Network interface of the scheduler and the worker jobs (e.g. ib0; lo for one machine; "
                   "default: dask's choice)."),
        click.option("--shard", cls=SectionOption, section=SHARD_SECTION, default=None,
                     help="Process only share I of N of the inputs (I/N, I from 0), balanced by pixels and stable "
                          "when files are added; N tasks with the same inputs and --out fill one store (default: every input)."),
        click.option("--shard-from-env", cls=SectionOption, section=SHARD_SECTION, is_flag=True,
                     help="The share of this SLURM array task (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN, "
                          "SLURM_ARRAY_TASK_STEP, SLURM_ARRAY_TASK_COUNT): sbatch --array=0-N-1 (default: off)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def cluster_spec(kw: dict):
    """The ClusterSpec the cluster options ask for (None: in this process); pops them from ``kw``."""
    from semtile.errors import SemtileError

    cluster, workers = kw.pop("cluster"), kw.pop("workers")
    address, scheduler_file = kw.pop("scheduler_address"), kw.pop("scheduler_file")
    slurm = {k: kw.pop(k) for k in ("jobs", "cores", "memory", "walltime", "queue", "account", "gpus",
                                    "lifetime", "lifetime_stagger", "interface")}
    chosen = [name for name, given in (("--cluster", cluster), ("--scheduler-address", address),
                                       ("--scheduler-file", scheduler_file)) if given]
    if len(chosen) > 1:
        raise SemtileError(f"{' and '.join(chosen)}: choose one place to run")
    if workers and cluster != "local":
        raise SemtileError("--workers goes with --cluster local")
    for name in ("lifetime", "lifetime_stagger", "interface"):
        if slurm[name] and cluster != "slurm":
            raise SemtileError(f"--{name.replace('_', '-')} goes with --cluster slurm")
    if slurm["lifetime_stagger"] and not slurm["lifetime"]:
        raise SemtileError("--lifetime-stagger goes with --lifetime")
    if not chosen:
        return None
    from semtile.execution.distributed import ClusterSpec  # dask.distributed: only for a cluster
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


def shard_spec(kw: dict):
    """The Shard that --shard or --shard-from-env ask for (None: every input); pops them from ``kw``."""
    from semtile.errors import SemtileError
    from semtile.execution.shards import parse_shard, shard_from_env

    shard, from_env = kw.pop("shard"), kw.pop("shard_from_env")
    if shard and from_env:
        raise SemtileError("--shard and --shard-from-env: choose one")
    return parse_shard(shard) if shard else shard_from_env() if from_env else None


def train_config(kw: dict):
    from semtile.io.dataset import parse_split
    from semtile.models.networks import Architecture
    from semtile.science.training import TrainConfig

    arch = dict(c=kw.pop("c"), d=kw.pop("d"), n=kw.pop("n"), N=kw.pop("N"))
    config = TrainConfig(split=parse_split(kw.pop("split")),
                         **{k: kw.pop(k) for k in ("epochs", "steps_per_epoch", "batch_size", "crop", "lr", "seed",
                                                   "threads", "patience", "device", "resume",
                                                   "path_column", "label_column")})
    return arch, config, Architecture


def verbosity() -> int:
    """The command line's -q (-1), default (0) or -v count (1, 2), as the group read it."""
    ctx = click.get_current_context(silent=True)
    return int(ctx.meta.get("semtile.verbosity", 0)) if ctx is not None else 0


def live_failures() -> bool:
    """Whether an image's failure was already shown as its own line while the run went (a terminal's compact
    log), so the summary need not list it again."""
    from semtile.logs import compact_terminal

    return compact_terminal()


class Progress:
    """A click progress bar on a terminal only (not with -q); yields an ``advance(n)`` callable or None."""

    def __init__(self, total: int, label: str):
        shown = sys.stderr.isatty() and verbosity() >= 0
        self.bar = click.progressbar(length=total, label=label, file=sys.stderr) if shown else None

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return (lambda n: self.bar.update(n)) if self.bar else None

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)
        return False

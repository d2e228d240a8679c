"""The ``semtile`` command: the group and its commands, one module per command group, each thin."""

from __future__ import annotations

import re
import sys

import click

from semtile import __version__
from semtile.cli.clusters import clusters
from semtile.cli.explain import explain
from semtile.cli.masks import masks
from semtile.cli.models import engines, export
from semtile.cli.process import process
from semtile.cli.report import report
from semtile.cli.science import evaluate, hypotheses, search
from semtile.cli.slurm import slurm_script, tables
from semtile.cli.synth import synth
from semtile.cli.train import train
from semtile.cli.verify import verify
from semtile.logs import configure_logging

#: The group's options a command line may also give after the command (``semtile process ... -v``).
GLOBAL_FLAGS = frozenset({"--log-json", "--log-text", "--verbose", "--quiet", "-q"})
_SHORT_VERBOSE = re.compile(r"-v+")


class GlobalOptionsAnywhere(click.Group):
    """A group whose logging options are accepted before or after the command: they are moved in front."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        moved = [a for a in args[:end] if a in GLOBAL_FLAGS or _SHORT_VERBOSE.fullmatch(a)]
        if moved:
            rest = [a for a in args[:end] if not (a in GLOBAL_FLAGS or _SHORT_VERBOSE.fullmatch(a))]
            args = [*moved, *rest, *args[end:]]
        return super().parse_args(ctx, args)


@click.group(cls=GlobalOptionsAnywhere)
@click.version_option(__version__, prog_name="semtile")
@click.option("--log-json/--log-text", default=None, help="Log format (default: JSON unless stderr is a terminal).")
@click.option("-v", "--verbose", count=True,
              help="More detail: -v every event with its fields (on a terminal too), -vv debug events.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only, and no progress bar.")
@click.pass_context
def main(ctx: click.Context, log_json: bool | None, verbose: int, quiet: bool) -> None:
    """semtile: batch segmentation and classification of SEM scans.

    On a terminal, a command shows a progress bar and one short line per
    warning or failed image; -v shows every event in full. The options
    --log-json, --log-text, -v and -q may also follow the command.
    """
    if quiet and verbose:
        raise click.UsageError("-q and -v: choose one")
    verbosity = -1 if quiet else verbose
    ctx.meta["semtile.verbosity"] = verbosity
    configure_logging(json=log_json, verbosity=verbosity)


for command in (synth, train, process, explain, clusters, masks, report, hypotheses, search, evaluate, engines, export,
                verify, slurm_script, tables):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())

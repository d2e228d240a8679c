"""The ``semtile`` command: the group and its commands, one module per command group, each thin."""

from __future__ import annotations

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
from semtile.cli.synth import synth
from semtile.cli.train import train
from semtile.logs import configure_logging


@click.group()
@click.version_option(__version__, prog_name="semtile")
@click.option("--log-json/--log-text", default=None, help="Log format (default: JSON unless stderr is a terminal).")
def main(log_json: bool | None) -> None:
    """semtile: batch segmentation and classification of SEM scans."""
    configure_logging(json=log_json)


for command in (synth, train, process, explain, clusters, masks, report, hypotheses, search, evaluate, engines, export):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())

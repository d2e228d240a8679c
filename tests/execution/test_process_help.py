"""``semtile process --help``: the common options first, the Dask cluster and the SLURM options under their own
headings, and every option's default stated."""

from __future__ import annotations

import click
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.cli.options import CLUSTER_SECTION, SLURM_SECTION
from semtile.cli.process import process


def test_cluster_and_slurm_options_have_their_own_sections():
    text = CliRunner().invoke(main, ["process", "--help"]).output
    common, cluster, slurm = text.index("\nOptions:"), text.index(f"\n{CLUSTER_SECTION}:"), text.index(f"\n{SLURM_SECTION}:")
    assert common < cluster < slurm
    for option in ("--out", "--threads", "--scratch", "--engine", "--page"):
        assert common < text.index(f"  {option} ") < cluster, option
    for option in ("--cluster", "--workers", "--scheduler-address", "--scheduler-file"):
        assert cluster < text.index(f"  {option} ") < slurm, option
    for option in ("--jobs", "--cores", "--memory", "--walltime", "--queue", "--account", "--gpus"):
        assert slurm < text.index(f"  {option} "), option


def test_every_option_states_its_default():
    ctx = click.Context(process)
    silent = []
    for param in process.params:
        if not isinstance(param, click.Option) or param.required or param.hidden:
            continue
        if param.is_flag and not param.default:
            stated = "default" in (param.help or "").lower()
        else:
            record = param.get_help_record(ctx)
            stated = record is not None and "default" in record[1].lower()
        if not stated:
            silent.append(param.opts[0])
    assert silent == []
    text = CliRunner().invoke(main, ["process", "--help"]).output
    assert "$TMPDIR" in text  # --scratch

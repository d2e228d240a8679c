"""``semtile slurm-script`` (an sbatch script for a lab to edit) and ``semtile tables`` (results.csv again)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from semtile.errors import SemtileError


@click.command("slurm-script")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, help="Result store, on a folder every node sees.")
@click.option("--way", default="allocation", show_default=True, type=click.Choice(["allocation", "array", "workers"]),
              help="allocation: Dask inside one job (a scheduler file on --shared); array: a job array, each task "
                   "its share of the inputs; workers: a small driver job that submits worker jobs.")
@click.option("--partition", default=None, help="Partition (default: the cluster's default).")
@click.option("--account", default=None, help="Account (default: your default).")
@click.option("--time", "walltime", default="06:00:00", show_default=True, help="Walltime of the job (each task, each worker job).")
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(1), help="allocation: nodes.")
@click.option("--workers-per-node", default=4, show_default=True, type=click.IntRange(1),
              help="allocation: Dask workers (SLURM tasks) per node; with --gpus, one per GPU.")
@click.option("--cpus", default=4, show_default=True, type=click.IntRange(1),
              help="CPUs of each worker, array task or worker job (the engine's threads).")
@click.option("--gpus", default=0, show_default=True, type=click.IntRange(0),
              help="GPUs of each worker, array task or worker job.")
@click.option("--mem", default=None, help="Memory per node (allocation), per task (array) or per worker job (workers).")
@click.option("--tasks", default=4, show_default=True, type=click.IntRange(1),
              help="array: tasks (shares of the inputs); workers: worker jobs.")
@click.option("--scratch", default=None, help="Scratch folder every node sees (default: semtile-scratch beside --out).")
@click.option("--shared", default=None, help="allocation: folder for the scheduler file, seen by every node (default: semtile-jobs beside --out).")
@click.option("--model", default=None, help="Model folder (default: the built-in model).")
@click.option("--setup", multiple=True, help="A shell line run first, e.g. 'source ~/venvs/semtile/bin/activate' "
                                             "(repeatable; default: a commented example).")
@click.option("--interface", default=None, help="Network interface of the Dask scheduler and workers (e.g. ib0).")
@click.option("--process-arg", "process_args", multiple=True,
              help="One more `semtile process` argument, e.g. --process-arg=--tile --process-arg=512 (repeatable).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the script here (default: standard output).")
def slurm_script(inputs, out, way, partition, account, walltime, nodes, workers_per_node, cpus, gpus, mem, tasks,
                 scratch, shared, model, setup, interface, process_args, output) -> None:
    """Write an sbatch script that runs `semtile process INPUTS --out OUT` on SLURM, for a lab to edit.

    Submit it with `sbatch SCRIPT`. Paths must be folders every node sees.
    docs/clusters.md compares the three ways.
    """
    import os

    from semtile.execution.slurm_script import ScriptSpec, walltime_seconds
    from semtile.execution.slurm_script import slurm_script as write

    try:
        walltime_seconds(walltime)
    except (ValueError, KeyError):
        raise click.BadParameter(f"{walltime!r}: expected [D-]HH:MM:SS", param_hint="--time") from None
    if not setup and sys.prefix != sys.base_prefix:  # the virtual environment this semtile runs from
        setup = (f"source {os.path.join(sys.prefix, 'bin', 'activate')}",)
    spec = ScriptSpec(inputs=tuple(os.path.abspath(i) for i in inputs), out=os.path.abspath(out), way=way,
                      partition=partition, account=account, time=walltime, nodes=nodes,
                      workers_per_node=workers_per_node, cpus=cpus, gpus=gpus, mem=mem, tasks=tasks,
                      scratch=os.path.abspath(scratch) if scratch else None,
                      shared=os.path.abspath(shared) if shared else None,
                      model=os.path.abspath(model) if model else None, setup=tuple(setup), interface=interface,
                      process_args=tuple(process_args))
    text = write(spec)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        output.chmod(0o755)
        click.echo(f"wrote {output}: submit with sbatch {output}", err=True)


@click.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The table (default: beside the store, results.csv for results.zarr).")
def tables(store, csv_path) -> None:
    """Write STORE's results.csv again, from its results and every run's table (e.g. after a job array).

    One row per result, plus, for inputs with no result, the latest failure a
    run recorded. A job array's last task writes it too; this is for a task
    that was killed, or to see the table now.
    """
    import csv

    from semtile.store import default_csv_path, open_store
    from semtile.store.table import runs_folder, write_current_table

    table = csv_path or default_csv_path(store)
    try:
        rows = write_current_table(table, open_store(store, mode="r"))
    except (SemtileError, OSError) as exc:
        raise click.UsageError(f"{store}: {exc}") from exc
    with table.open(newline="") as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    runs = runs_folder(table)
    count = len(list(runs.glob("*.csv"))) if runs.is_dir() else 0
    click.echo(f"wrote {table}: {rows} rows, {statuses.count('ok')} ok, {statuses.count('error')} failed "
               f"(from {count} run table{'s' if count != 1 else ''})")

"""``semtile verify STORE``: check every stored result against what was written; ``--repair`` sets the damaged aside."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from semtile.errors import SemtileError


@click.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repair", is_flag=True,
              help="Set each damaged result aside (into STORE/.semtile/damaged/, with its reasons) so that the next "
                   "`semtile process` redoes it.")
@click.option("--quick", is_flag=True,
              help="Only what a rerun checks: file sizes against the manifest written at commit, no data read.")
@click.option("--workers", default=None, type=click.IntRange(1), help="Results checked at once (threads; default: the cores, at most 8).")
def verify(store: Path, repair: bool, quick: bool, workers: int | None) -> None:
    """Check every result in STORE: each file against its manifest (size and CRC), every chunk of every array
    decoded, the record against the arrays. Prints the count, each damaged result with its reasons, and the
    time. Exit 0: all whole; 1: damaged results found (set aside with --repair); 2: not a result store."""
    from semtile.store import open_store
    from semtile.store.verify import set_aside, verify_store

    try:
        opened = open_store(store, mode="r")
        verdict = verify_store(opened, full=not quick, workers=workers)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    for name, damage in sorted(verdict.damaged.items()):
        click.echo(f"{name}: damaged: {damage[0]}" + (f" (and {len(damage) - 1} more)" if len(damage) > 1 else ""))
        for d in damage[1:]:
            click.echo(f"  {d}")
    legacy = verdict.checked - verdict.manifests
    mb = verdict.bytes_read / 1e6
    click.echo(f"verify: {verdict.checked} results checked{'' if quick else f' ({mb:.1f} MB read)'} in "
               f"{verdict.seconds:.2f} s: {verdict.checked - len(verdict.damaged)} whole, {len(verdict.damaged)} damaged"
               + (f"; {legacy} written before manifests (decoded only: flipped bytes that still decode go unseen)"
                  if legacy else ""))
    if not verdict.damaged:
        return
    if repair:
        for name, damage in sorted(verdict.damaged.items()):
            try:
                where = set_aside(store, name, damage)
            except (OSError, SemtileError) as exc:
                click.echo(f"{name}: not set aside: {exc}", err=True)
                continue
            click.echo(f"{name}: set aside as {where.relative_to(store)}")
        click.echo("the next `semtile process` into this store redoes them")
    else:
        click.echo("`semtile verify --repair` sets them aside for the next `semtile process` to redo")
    sys.exit(1)

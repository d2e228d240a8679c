"""``semtile synth``: synthetic SEM data with exact ground truth.

``semtile synth OUT ...`` (or ``semtile synth copper OUT ...``) writes etched
copper surfaces, with ``--defects`` particles, scratches and pits;
``semtile synth lattice OUT ...`` writes graphene-like lattice patches with
point defects.
"""

from __future__ import annotations

from pathlib import Path

import click

from semtile.cli.options import parse_size
from semtile.errors import SemtileError

DEFAULT_COMMAND = "copper"


class _CopperByDefault(click.Group):
    """A group whose first argument, unless it names a subcommand, goes to the copper generator.

    ``semtile synth demo --per-label 3`` is ``semtile synth copper demo --per-label 3``
    (a copper folder named like a subcommand needs the explicit ``copper``).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_CopperByDefault)
def synth() -> None:
    """Write synthetic SEM data with exact ground truth: copper surfaces (default) or lattice patches.

    `semtile synth OUT ...` is `semtile synth copper OUT ...`.
    """


@synth.command("copper")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-label", default=12, show_default=True, type=click.IntRange(1), help="Images per label.")
@click.option("--labels", default=16, show_default=True, type=click.IntRange(2), help="Number of labels T.")
@click.option("--size", default="960x1280", show_default=True, help="Frame size ROWSxCOLS (data bar included).")
@click.option("--truth", default="sqrt", show_default=True, help="Adhesive fraction curve: linear, sqrt, log, exp, power:K or table:FILE.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--defects", is_flag=True,
              help="Add particles, scratches and pits: masks in defect_masks/ (1 particle, 2 scratch, 3 pit), counts in defects.csv.")
def copper(out: Path, per_label: int, labels: int, size: str, truth: str, seed: int, defects: bool) -> None:
    """Write synthetic SEM surfaces of etched copper with ground-truth masks to OUT."""
    from semtile.synth import SynthConfig, write_dataset

    try:
        rows = write_dataset(out, SynthConfig(per_label=per_label, labels=labels, size=parse_size(size), truth=truth,
                                              seed=seed, defects=defects))
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {len(rows)} images to {out}" + (" with defects" if defects else ""))


@synth.command("lattice")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", default=5000, show_default=True, type=click.IntRange(1), help="Patches to write.")
@click.option("--defect-fraction", default=0.02, show_default=True, type=click.FloatRange(0, 1),
              help="Share of the patches that carry one point defect (label 1).")
@click.option("--size", default=48, show_default=True, type=click.IntRange(16), help="Patch side in pixels.")
@click.option("--kinds", default="vacancy,distorted_ring,adatom", show_default=True,
              help="Defect kinds to draw from (comma-separated).")
@click.option("--seed", default=0, show_default=True, type=int)
def lattice(out: Path, count: int, defect_fraction: float, size: int, kinds: str, seed: int) -> None:
    """Write graphene-like lattice patches, a share of them with point defects, to OUT.

    OUT gets images/, masks/ (the exact defect pixels), labels.csv (1 = defect,
    0 = perfect) and truth.csv (kind, variant, defect pixels, position).
    """
    from semtile.synth.lattice import LatticeConfig, write_lattice_dataset

    try:
        config = LatticeConfig(count=count, defect_fraction=defect_fraction, size=size, seed=seed,
                               kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()))
        rows = write_lattice_dataset(out, config)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {len(rows)} patches ({sum(r['label'] for r in rows)} with a defect) to {out}")

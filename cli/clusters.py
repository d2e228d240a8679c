"""``semtile clusters``: latent clusters of tiles (004), written as a cluster map beside each result's mask."""

from __future__ import annotations

from pathlib import Path

import click

from semtile.errors import SemtileError


def _k_range(value: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected LO,HI such as 2,8") from None
    if lo < 2 or hi < lo:
        raise click.BadParameter(f"{value!r}: need 2 <= LO <= HI")
    return lo, hi


@click.command()
@click.argument("results", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for clusters.csv, clusters.json and montage.png.")
@click.option("--clusters", "k", default=None, type=click.IntRange(1),
              help="Number of clusters K (default: chosen by the mean silhouette score over --k-range).")
@click.option("--k-range", default="2,8", show_default=True, help="LO,HI: the K tried when --clusters is not given.")
@click.option("--features", default="classifier", show_default=True, type=click.Choice(["classifier", "segmenter"]),
              help="Tile embedding: the classifier's globally pooled features, or the segmenter's bottleneck.")
@click.option("--masks", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="True masks named like the inputs: report the adjusted Rand index against true rough/smooth tiles.")
@click.option("--model", type=click.Path(exists=True, path_type=Path), default=None,
              help="Network (.pt) or model folder (default: the one recorded in each result's provenance).")
@click.option("--names", default=None, help="Only these results (comma-separated; default: all).")
@click.option("--tile", default=None, type=click.IntRange(16), help="Tile side (default: the run's).")
@click.option("--halo", default=None, type=click.IntRange(0), help="Tile halo (default: the run's, or tile/8 with --tile).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of k-means and the silhouette sample.")
@click.option("--examples", default=8, show_default=True, type=click.IntRange(1), help="Tiles per cluster in the montage.")
@click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads for torch.")
@click.option("--no-maps", is_flag=True, help="Do not write cluster maps into the store (tables and figure only).")
def clusters(results, out, k, k_range, features, masks, model, names, tile, halo, seed, examples, threads,
             no_maps) -> None:
    """Cluster the tiles of RESULTS.zarr by their latent features (k-means) and write a cluster map into each result.

    All tiles of all results are clustered together, so a cluster means the same
    thing in every image. Writes the map `clusters` (each tile's cluster on its
    core) into each result, and clusters.csv (the share of each cluster per
    image), clusters.json and montage.png into --out.
    """
    from semtile.explain.clusters import cluster_store

    chosen = [n.strip() for n in names.split(",") if n.strip()] if names else None
    try:
        report = cluster_store(results, out, k=k, features=features, k_range=_k_range(k_range), masks=masks,
                               model=model, names=chosen, tile=tile, halo=halo, threads=threads, seed=seed,
                               examples=examples, write_maps=not no_maps)
    except SemtileError as exc:
        raise click.UsageError(str(exc)) from exc
    for name, error in report.errors.items():
        click.echo(f"{name}: error: {error}", err=True)
    how = report.chosen_by + (f", silhouette {report.silhouette:.3f}" if report.silhouette is not None else "")
    click.echo(f"{report.tiles} tiles of {len(report.images)} images ({report.features} features): "
               f"K = {report.k} ({how})")
    if report.silhouette_by_k:
        click.echo("silhouette by K: " + ", ".join(f"{kk}: {v:.3f}" for kk, v in report.silhouette_by_k.items()))
    if report.ari is not None:
        click.echo(f"adjusted Rand index against true rough/smooth tiles: {report.ari:.3f} ({report.truth_tiles} tiles)")
    click.echo(f"wrote {out / 'clusters.csv'}, {out / 'montage.png'}"
               + ("" if no_maps else f" and map 'clusters' in {len(report.images)} results"))
    if report.errors:
        raise SystemExit(1)

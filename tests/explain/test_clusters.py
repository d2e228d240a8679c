"""Latent clusters: embeddings, k-means, maps in the store, tables, montage, ARI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from semtile.errors import SemtileError
from semtile.explain.clusters import (
    MAP_NAME,
    TileEmbedder,
    cluster_features,
    cluster_store,
    embed_tiles,
    tile_map,
    tile_truth,
)
from semtile.inference.split import TileGrid
from semtile.models.io import load_model


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, tiny_dataset, tiny_bundle):
    from semtile.cli.main import main

    out = tmp_path_factory.mktemp("clusters") / "r.zarr"
    result = CliRunner().invoke(main, ["process", str(tiny_dataset / "images"), "--out", str(out), "--model",
                                       str(tiny_bundle), "--tile", "32", "--engine", "torch-cpu", "--threads", "1"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_tile_truth_and_map_by_hand():
    grid = TileGrid((5, 7), tile=4, halo=1)  # core 2: 3 x 4 tiles, last row and column 1 pixel wide
    truth = np.zeros((5, 7), bool)
    truth[0:2, 0:2] = True  # tile 0 all rough
    truth[0, 2] = True  # tile 1: half its core -> not "most"
    truth[4, 6] = True  # tile 11: its 1-pixel core
    assert tile_truth(truth, grid).tolist() == [True, False, False, False] + [False] * 4 + [False] * 3 + [True]
    m = tile_map(np.arange(12), grid)
    assert m.shape == (5, 7) and m[0, 0] == 0 and m[1, 3] == 1 and m[4, 6] == 11 and m[2, 0] == 4


def test_separated_blobs_cluster_exactly_and_k_is_chosen_by_silhouette():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 40)
    x = rng.normal(0, 0.1, (120, 5)) + np.eye(5)[truth] * 4
    fit = cluster_features(x, None, k_range=(2, 6), seed=0)
    assert fit["k"] == 3 and fit["chosen_by"].startswith("silhouette")
    assert set(fit["silhouette_by_k"]) == {2, 3, 4, 5, 6} and max(fit["silhouette_by_k"].values()) == fit["silhouette"]
    assert adjusted_rand_score(truth, fit["labels"]) == 1.0
    given = cluster_features(x, 2, seed=0)
    assert given["k"] == 2 and given["chosen_by"] == "given" and np.bincount(given["labels"])[0] == 80  # largest first
    with pytest.raises(SemtileError, match="--clusters 500"):
        cluster_features(x, 500)


def test_embeddings_classifier_pool_and_segmenter_bottleneck(tiny_bundle):
    import torch

    image = np.random.default_rng(1).random((40, 70), dtype=np.float32)
    grid = TileGrid(image.shape, 32, 4)
    clf = load_model(tiny_bundle / "classifier.pt", "classifier")
    emb = embed_tiles(image, grid, TileEmbedder(clf.network), batch_size=3)
    assert emb.shape == (len(grid), clf.arch.c)
    # The pooled features are what the classifier's head reads: head(features) = logits.
    from semtile.inference.split import read_windows

    tiles = torch.from_numpy(read_windows(image, grid.origins, 32))[:, None]
    with torch.no_grad():
        np.testing.assert_allclose(clf.network.head(torch.from_numpy(emb)).numpy(), clf.network(tiles).numpy(),
                                   rtol=1e-4, atol=1e-5)
    seg = load_model(tiny_bundle / "segmenter.pt", "segmenter")
    assert embed_tiles(image, grid, TileEmbedder(seg.network)).shape == (len(grid), seg.arch.c)


def test_cluster_store_writes_maps_table_montage_and_ari(tiny_store, tiny_dataset, tmp_path):
    from semtile.results import open_results

    report = cluster_store(tiny_store, tmp_path / "cl", k=2, masks=tiny_dataset / "masks", threads=1, examples=3)
    assert report.k == 2 and report.chosen_by == "given" and len(report.images) == 8 and not report.errors
    assert report.ari is not None and -1 <= report.ari <= 1 and report.truth_tiles == report.tiles
    assert sum(map(sum, report.contingency)) == report.tiles
    results = open_results(tiny_store)
    for name in results.names:
        result = results[name]
        assert MAP_NAME in result.maps
        cmap = np.asarray(result.map(MAP_NAME).compute())
        assert cmap.shape == tuple(result.mask.shape) and set(np.unique(cmap)) <= {0.0, 1.0}
        grid = TileGrid(cmap.shape, 32, 4)
        for y0, x0, y1, x1 in grid.core_boxes:  # constant over every tile core
            assert np.ptp(cmap[y0:y1, x0:x1]) == 0
        assert result.stored.maps[MAP_NAME]["k"] == 2
    with (tmp_path / "cl" / "clusters.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and all(abs(float(r["cluster_0"]) + float(r["cluster_1"]) - 1) < 1e-5 for r in rows)
    assert (tmp_path / "cl" / "montage.png").stat().st_size > 5_000
    assert json.loads((tmp_path / "cl" / "clusters.json").read_text())["k"] == 2


def test_clusters_command_chooses_k_and_refuses_bad_input(tiny_store, tmp_path):
    from semtile.cli.main import main

    runner = CliRunner()
    result = runner.invoke(main, ["clusters", str(tiny_store), "--out", str(tmp_path / "c"), "--features", "segmenter",
                                  "--k-range", "2,4", "--no-maps", "--threads", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "silhouette over k = 2..4" in result.output and "silhouette by K: 2:" in result.output
    bad = runner.invoke(main, ["clusters", str(tiny_store), "--out", str(tmp_path / "d"), "--names", "nope"])
    assert bad.exit_code == 2 and "no result named nope" in bad.output

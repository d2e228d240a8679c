"""A result opened as napari does it: ``napari --plugin napari-ome-zarr results.zarr/NAME``.

The napari-ome-zarr plugin is a thin layer over ome-zarr-py's ``Reader``: it
turns every node that has data into a napari layer, ``labels`` where the node
is a label image, ``image`` otherwise, with the scale of level 0. napari itself
(Qt, OpenGL) is not installed here; this test makes the same calls the plugin
makes and checks the layers it would build, with an extra map in the group.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ome_zarr")
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader

from semtile.results import open_results
from semtile.store.ome_zarr import level_shapes

from sample_results import add_heat_map, write_results


def napari_layers(path) -> list[tuple[list, dict, str]]:
    """(data, metadata, layer type) per layer, as the plugin's reader builds them."""
    location = parse_url(str(path))
    assert location is not None, f"{path}: not recognised as OME-Zarr"
    layers = []
    for node in Reader(location)():
        if not node.data:
            continue
        metadata = {}
        transforms = node.metadata.get("coordinateTransformations")
        if transforms:
            for transform in transforms[0]:
                if "scale" in transform:
                    metadata["scale"] = tuple(transform["scale"])
        kind = "labels" if node.load(Label) else "image"
        if kind == "labels":
            metadata.update({k: node.metadata[k] for k in ("name", "color", "properties") if k in node.metadata})
        layers.append((node.data, metadata, kind))
    return layers


def test_a_result_opens_as_an_image_and_an_adhesive_labels_layer(tmp_path):
    store = write_results(tmp_path, n=2, shape=(600, 700), failures=False)
    add_heat_map(store, "scan_1", shape=(600, 700))  # an extra map must not upset the reader
    results = open_results(store)
    for name in results.names:
        layers = napari_layers(store / name)
        kinds = sorted(kind for _, _, kind in layers)
        assert kinds == ["image", "labels"], name
        image = next(layer for layer in layers if layer[2] == "image")
        labels = next(layer for layer in layers if layer[2] == "labels")
        shapes = level_shapes((600, 700))
        for data, metadata, _ in (image, labels):
            assert [tuple(level.shape) for level in data] == shapes  # the whole pyramid, for napari to zoom
            assert metadata["scale"] == pytest.approx((2e-3, 2e-3))  # 2 nm pixels, in micrometer
        assert labels[1]["name"] == "adhesive"
        assert labels[1]["color"][1] == pytest.approx([1.0, 80 / 255, 0.0, 160 / 255])
        # The same pixels napari shows as what open_results gives.
        result = results[name]
        np.testing.assert_allclose(np.asarray(image[0][-1]) / 65535, result.level(len(shapes) - 1).compute(),
                                   atol=1e-6)
        np.testing.assert_array_equal(np.asarray(labels[0][0]) != 0, result.binary_mask.compute())
    assert "heat" in results["scan_1"].maps

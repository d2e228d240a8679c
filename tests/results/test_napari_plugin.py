"""semtile's own napari reader (``napari --plugin semtile demo.zarr/NAME``), found and called as napari does.

npe2 (napari's plugin engine, no Qt) reads the manifest ``semtile/napari.yaml`` (installed, it is found by
the ``napari.manifest`` entry point), picks semtile's reader for a result group and calls it; the layers
it gives are checked: names, visibility, types, scale, the pyramids' shapes. Where napari itself imports
(headless, no Qt needed), every layer is also built as a napari layer. And the attributes a viewer prints
(napari-ome-zarr dumps the group's ``zarr.json`` attributes) stay small while the provenance is complete.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

import semtile
from semtile.results import open_results
from semtile.results.napari import napari_get_reader
from semtile.store import level_shapes, open_store

from sample_results import add_heat_map, sample_result, write_results

npe2 = pytest.importorskip("npe2")

MANIFEST = Path(semtile.__file__).parent / "napari.yaml"
BUILTIN_CARD = Path(semtile.__file__).parent / "models" / "builtin" / "segmenter.json"


def plugin_manager() -> npe2.PluginManager:
    """A plugin manager holding semtile's manifest (as napari's own would after discovery)."""
    pm = npe2.PluginManager()
    pm.register(npe2.PluginManifest.from_file(MANIFEST))
    pm.activate("semtile")  # imports the reader's python_name, as napari does on first use
    return pm


def read_as_napari(pm: npe2.PluginManager, path: Path) -> list[tuple]:
    """What ``napari --plugin semtile PATH`` gets: semtile's compatible reader, called as npe2 calls it."""
    readers = [r for r in pm.iter_compatible_readers([str(path)]) if r.plugin_name == "semtile"]
    assert readers, f"{path}: semtile's reader does not offer itself"
    read = readers[0].exec(kwargs={"path": [str(path)], "stack": False, "_registry": pm.commands})
    assert read is not None, f"{path}: semtile's reader refused it"
    return read([str(path)], stack=False)


def test_the_manifest_is_valid_and_installed_with_the_entry_point():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "semtile"
    assert [c.python_name for c in manifest.contributions.commands] == ["semtile.results.napari:napari_get_reader"]
    assert manifest.contributions.readers[0].accepts_directories
    installed = [ep for ep in entry_points(group="napari.manifest") if ep.name == "semtile"]
    if installed and installed[0].value == "semtile:napari.yaml":  # installed from this checkout's pyproject
        assert npe2.PluginManifest.from_distribution("semtile").name == "semtile"


def test_a_result_opens_as_the_scan_the_adhesive_labels_shown_and_its_maps(tmp_path):
    store = write_results(tmp_path, n=2, shape=(600, 700), failures=False)
    add_heat_map(store, "scan_1", shape=(600, 700))
    # A result named with dots (napari-ome-zarr cut the image layer's name at the first one).
    dotted = open_store(store)
    source = tmp_path / "scans" / "run.2026.05.scan.tif"
    source.write_bytes(b"")
    dotted_name = dotted.claim(source)
    dotted.write(dotted_name, sample_result(source, 3, (600, 700)))
    pm = plugin_manager()
    shapes = level_shapes((600, 700))
    results = open_results(store)
    for name in ("scan_1", dotted_name):
        layers = read_as_napari(pm, store / name)
        kinds = [(kwargs["name"], kind, kwargs["visible"]) for _, kwargs, kind in layers]
        expected = [(name, "image", True), ("adhesive", "labels", True)]
        assert kinds == expected + ([("heat", "image", False)] if name == "scan_1" else [])
        for data, kwargs, _ in layers[:2]:
            assert [tuple(level.shape) for level in data] == shapes  # the whole pyramid, lazily
            assert kwargs["scale"] == pytest.approx((2e-3, 2e-3))  # 2 nm pixels, in micrometres
            assert kwargs["multiscale"] is True and kwargs["metadata"]["semtile"]["name"] == name
        (image, _, _), (labels, _, _) = layers[:2]
        np.testing.assert_allclose(image[0].compute(), results[name].image.compute())
        np.testing.assert_array_equal(labels[0].compute() != 0, results[name].binary_mask.compute())
        assert labels[0].dtype == np.uint8
    assert "." in dotted_name and read_as_napari(pm, store / dotted_name)[0][1]["name"] == dotted_name
    # The whole store: every result's layers, the labels and maps named after their result.
    names = [kwargs["name"] for _, kwargs, _ in read_as_napari(pm, store)]
    assert names == [dotted_name, f"{dotted_name} adhesive", "scan_0", "scan_0 adhesive",
                     "scan_1", "scan_1 adhesive", "scan_1 heat"]
    # Not a semtile result: the reader declines (napari then tries another plugin).
    assert napari_get_reader(str(tmp_path / "scans")) is None
    assert napari_get_reader(str(tmp_path / "absent.zarr")) is None


def test_napari_builds_the_layers(tmp_path):
    napari_layers = pytest.importorskip("napari.layers")
    store = write_results(tmp_path, n=1, shape=(600, 700), failures=False)
    add_heat_map(store, "scan_0", shape=(600, 700))
    built = [napari_layers.Layer.create(data, kwargs, kind) for data, kwargs, kind in read_as_napari(
        plugin_manager(), store / "scan_0")]
    assert [(type(layer).__name__, layer.name, layer.visible, layer.multiscale) for layer in built] == [
        ("Image", "scan_0", True, True), ("Labels", "adhesive", True, True), ("Image", "heat", False, False)]
    assert tuple(built[1].scale) == pytest.approx((2e-3, 2e-3))
    np.testing.assert_allclose(built[1].colormap.map(np.array([1]))[0], [1.0, 80 / 255, 0.0, 160 / 255], atol=1e-6)


def test_the_attributes_a_viewer_prints_are_small_and_the_provenance_is_complete(tmp_path):
    store_path = tmp_path / "r.zarr"
    store = open_store(store_path)
    source = tmp_path / "scan.tif"
    source.write_bytes(b"")
    result = sample_result(source, 0, (300, 400))
    training = json.loads(BUILTIN_CARD.read_text())["training"]  # the built-in segmenter's whole history
    result.attrs["provenance"]["model"]["segmenter"]["training"] = training
    name = store.claim(source)
    store.write(name, result)
    dumped = json.loads((store_path / name / "zarr.json").read_text())["attributes"]
    assert len(json.dumps(dumped)) < 4096, "napari-ome-zarr prints these attributes whole"
    stub = dumped["semtile"]["attrs"]["provenance"]
    assert stub["input"]["sha256"] == "ab" * 32 and stub["model"]["segmenter"]["sha256"] == "5e" * 32
    assert stub["engine"]["name"] == "torch-cpu" and stub["parameters"]["tile"] == 64
    assert "training" not in stub["model"]["segmenter"]
    provenance = open_results(store_path)[name].provenance
    assert {k: v for k, v in provenance.items() if k != "storage"} == result.attrs["provenance"]
    assert provenance["model"]["segmenter"]["training"] == training
    assert provenance["storage"]["mask"]["dtype"] == "uint8"  # what the store did, recorded with the rest
    assert store.record(name) == result.record  # the completion record stays in the attributes


def test_a_store_with_the_provenance_inline_still_reads(tmp_path):
    store = write_results(tmp_path, n=1, failures=False)
    group = store / "scan_0"
    provenance = json.loads((group / "provenance.json").read_text())
    meta = json.loads((group / "zarr.json").read_text())
    meta["attributes"]["semtile"]["attrs"]["provenance"] = provenance  # as results were written before
    (group / "zarr.json").write_text(json.dumps(meta))
    (group / "provenance.json").unlink()
    (group / ".manifest.json").unlink()  # nor had they a manifest
    assert open_results(store)["scan_0"].provenance == provenance
    assert read_as_napari(plugin_manager(), group)[1][1]["name"] == "adhesive"


def test_napari_ome_zarr_names_the_image_by_its_whole_file_name(tmp_path, capsys):
    """New results carry NGFF ``omero`` channel metadata: napari-ome-zarr's layer is ``<file>: scan``, uncut."""
    store = write_results(tmp_path, n=1, failures=False)
    ome = json.loads((store / "scan_0" / "zarr.json").read_text())["attributes"]["ome"]
    assert ome["omero"]["channels"][0]["label"] == "scan" and ome["omero"]["rdefs"]["model"] == "greyscale"
    plugin = pytest.importorskip("napari_ome_zarr._reader")  # where napari and the plugin are installed
    layers = plugin.napari_get_reader(str(store / "scan_0"))(str(store / "scan_0"))
    assert layers[0][1]["name"] == "scan_0.tif: scan" and layers[0][2] == "image"
    assert len(capsys.readouterr().out) < 4096  # the plugin prints the group's attributes

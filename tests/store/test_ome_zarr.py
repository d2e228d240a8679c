"""The OME-Zarr store in particular: valid OME-NGFF 0.5, what an OME-Zarr reader sees, old stores still open.

The validator is ome-zarr-models (pydantic models of the NGFF 0.5 schemas), the reader ome-zarr-py's
``ome_zarr.reader.Reader``; both come with the ``test`` extra.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel
from ome_zarr_models.v05.labels import Labels
from test_store_conformance import assert_same, make_result, snapshot
from test_zarr_dir import legacy_write

from semtile.errors import SemtileError
from semtile.store import OmeZarrStore, ZarrDirectoryStore, open_store
from semtile.store.ome_zarr import level_shapes


def written(tmp_path, shape=(1030, 700), pixel_size_m=1.5e-9, seed=0):
    store = open_store(tmp_path / "r.zarr")
    result = make_result(tmp_path / "in" / "scan one.tif", seed=seed, shape=shape)
    result.attrs["pixel_size_m"] = pixel_size_m
    name = store.claim(result.source)
    store.write(name, result)
    return store, name, result


def test_new_stores_are_ome_zarr_and_old_ones_open_with_their_backend(tmp_path):
    assert isinstance(open_store(tmp_path / "new.zarr"), OmeZarrStore)
    (tmp_path / "empty").mkdir()
    assert isinstance(open_store(tmp_path / "empty"), OmeZarrStore)
    assert isinstance(open_store(tmp_path / "new.zarr", mode="r"), OmeZarrStore)
    assert zarr.open_group(str(tmp_path / "new.zarr"), mode="r").attrs["semtile"] == {"store": "ome-zarr", "version": 1}
    old = make_result(tmp_path / "scan.tif", seed=1)
    old.record = None
    legacy_write(tmp_path / "old.zarr", "scan", old)
    for mode in ("r", "a"):
        store = open_store(tmp_path / "old.zarr", mode=mode)
        assert isinstance(store, ZarrDirectoryStore) and store.names() == ["scan"]
        assert_same(store.read("scan"), old)
        assert store.find(tmp_path / "scan.tif") == "scan"
    with pytest.raises(SemtileError, match="older Zarr-directory format"):
        OmeZarrStore(tmp_path / "old.zarr")
    with pytest.raises(SemtileError, match="OME-Zarr result store"):
        ZarrDirectoryStore(tmp_path / "new.zarr")
    assert json.loads((tmp_path / "old.zarr" / "zarr.json").read_text())["attributes"] == {"semtile_store": 1}


def test_the_layout_of_one_image(tmp_path):
    store = open_store(tmp_path / "r.zarr")
    result = make_result(tmp_path / "in" / "scan one.tif", shape=(1030, 700))
    result.attrs["provenance"]["input"]["dtype"] = "uint8"  # an 8-bit scan
    name = store.claim(result.source)
    store.write(name, result)
    group = tmp_path / "r.zarr" / name
    assert sorted(p.name for p in group.iterdir()) == [".manifest.json", "0", "1", "class_probs", "labels", "mask", "provenance.json",
                                                         "zarr.json"]
    root = zarr.open_group(str(group), mode="r")
    assert [root[str(k)].shape for k in range(2)] == [(1030, 700), (515, 350)] == level_shapes((1030, 700))
    assert {root[str(k)].dtype for k in range(2)} == {np.dtype(np.uint8)}  # no wider than the input
    assert [root[f"labels/adhesive/{k}"].shape for k in range(2)] == [(1030, 700), (515, 350)]
    assert {root[f"labels/adhesive/{k}"].dtype for k in range(2)} == {np.dtype(np.uint8)}
    assert root["mask"].dtype == np.uint8 and root["mask"].shape == (1030, 700) and root["mask"].chunks == (512, 512)
    assert root["mask"].shards == (1536, 1024)  # one shard: one file per array
    assert all(len([p for p in (group / key).rglob("*") if p.is_file() and p.name != "zarr.json"]) == 1
               for key in ("0", "1", "mask", "labels/adhesive/0", "class_probs"))
    np.testing.assert_array_equal(root["mask"][...], np.rint(np.clip(result.mask, 0, 1) * 255).astype(np.uint8))
    assert root["class_probs"].dtype == np.float32
    assert root["0"].metadata.dimension_names == ("y", "x")
    # 8-bit gray x/255 is stored as x: lossless, and read back as float32 in [0, 1]
    np.testing.assert_array_equal(root["0"][...], np.rint(result.image * 255).astype(np.uint8))
    storage = root.attrs["semtile"]["storage"]
    assert storage["image"] == {"dtype": "uint8", "scale": 255, "decode": "value / 255"}
    assert storage["mask"]["dtype"] == "uint8" and storage["mask"]["scale"] == 255
    assert storage["codec"] == {"name": "zstd", "level": 1, "checksum": "crc32c"} and storage["shard"] == 4096
    np.testing.assert_array_equal(root["labels/adhesive/0"][...], result.binary_mask.astype(np.uint8))
    attrs = root.attrs.asdict()
    assert set(attrs) == {"ome", "semtile"}
    assert attrs["semtile"]["source_path"] == str(result.source.resolve())
    # The provenance is a document beside zarr.json (viewers print the attributes); the attributes keep a stub.
    stub = attrs["semtile"]["attrs"]["provenance"]
    given = result.attrs["provenance"]["input"]
    assert stub["document"] == "provenance.json" and stub["input"] == {k: given[k] for k in ("path", "sha256")}
    recorded = {**result.attrs["provenance"], "storage": storage}  # what was written, in the provenance too
    assert json.loads((group / "provenance.json").read_text()) == recorded
    assert store.read(name).attrs["provenance"] == recorded
    assert attrs["semtile"]["record"] == result.record
    assert attrs["ome"]["version"] == "0.5"
    labels = zarr.open_group(str(group / "labels"), mode="r").attrs.asdict()
    assert labels == {"ome": {"version": "0.5", "labels": ["adhesive"]}}
    label = zarr.open_group(str(group / "labels" / "adhesive"), mode="r").attrs["ome"]["image-label"]
    assert label["source"] == {"image": "../../"} and label["colors"][0]["label-value"] == 1
    assert len(label["colors"][0]["rgba"]) == 4
    assert not any((tmp_path / "r.zarr" / ".semtile" / "tmp").iterdir())  # no temporary left


def test_levels_stop_at_512_and_thin_adhesive_survives_every_level(tmp_path):
    assert level_shapes((37, 53)) == [(37, 53)]
    assert level_shapes((1100, 513)) == [(1100, 513), (550, 257)]
    assert level_shapes((512, 4000)) == [(512, 4000)]
    assert len(level_shapes((1100, 1300))) == 3
    store = open_store(tmp_path / "r.zarr")
    result = make_result(tmp_path / "thin.tif", shape=(1100, 1300))
    result.binary_mask[:] = False
    result.binary_mask[501, :] = True  # a one-pixel line
    store.write(store.claim(result.source), result)
    group = zarr.open_group(str(tmp_path / "r.zarr" / "thin"), mode="r")
    for k, shape in enumerate(level_shapes((1100, 1300))):
        level = group[f"labels/adhesive/{k}"][...]
        assert level.shape == shape and level.max() == 1 and (level.sum(axis=1) > 0).sum() == 1  # max: kept, one row
    assert_same(store.read("thin"), result)


@pytest.mark.parametrize("shape, pixel_size_m", [((1030, 700), 1.5e-9), ((37, 53), None)])
def test_groups_validate_against_ngff_0_5(tmp_path, shape, pixel_size_m):
    store, name, result = written(tmp_path, shape=shape, pixel_size_m=pixel_size_m)
    group = zarr.open_group(str(tmp_path / "r.zarr" / name), mode="r")
    image = Image.from_zarr(group)
    assert image.ome_attributes.version == "0.5"
    assert len(image.datasets[0]) == len(level_shapes(shape))
    assert image.labels is not None and image.labels.label_paths == ["adhesive"]
    Labels.from_zarr(group["labels"])
    label = ImageLabel.from_zarr(group["labels/adhesive"])
    assert label.ome_attributes.image_label.source.image == "../../"
    assert isinstance(open_ome_zarr(group), Image)  # told apart without being told the type
    axes = image.ome_attributes.multiscales[0].axes
    assert [a.name for a in axes] == ["y", "x"] and {a.type for a in axes} == {"space"}
    assert {a.unit for a in axes} == ({"micrometer"} if pixel_size_m else {None})


def test_the_validator_catches_a_broken_group(tmp_path):
    """The validation above is no formality: a label with fewer levels than its image is refused."""
    store, name, _ = written(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "r.zarr" / name, broken)
    meta_path = broken / "labels" / "adhesive" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["ome"]["multiscales"][0]["datasets"].pop()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="levels"):
        Image.from_zarr(zarr.open_group(str(broken), mode="r"))


@pytest.mark.parametrize("pixel_size_m", [1.5e-9, None])
def test_an_ome_zarr_reader_opens_image_and_labels(tmp_path, pixel_size_m):
    store, name, result = written(tmp_path, pixel_size_m=pixel_size_m, shape=(2060, 1400))
    location = parse_url(str(tmp_path / "r.zarr" / name))
    assert location is not None and location.version == "0.5"
    nodes = list(Reader(location)())
    images = [n for n in nodes if n.load(Multiscales) and not n.load(Label)]
    labels = [n for n in nodes if n.load(Label)]
    assert len(images) == 1 and len(labels) == 1
    step = pixel_size_m * 1e6 if pixel_size_m else 1.0
    for node in (images[0], labels[0]):
        assert [tuple(level.shape) for level in node.data] == level_shapes((2060, 1400))
        transforms = node.metadata["coordinateTransformations"]
        np.testing.assert_allclose([t[0]["scale"] for t in transforms], [[step * 2**k] * 2 for k in range(3)])
        np.testing.assert_allclose([t[1]["translation"] for t in transforms[1:]], [[step / 2] * 2, [step * 1.5] * 2])
        assert [a["name"] for a in node.metadata["axes"]] == ["y", "x"]
        assert all(("unit" in a) == bool(pixel_size_m) for a in node.metadata["axes"])
    np.testing.assert_allclose(np.asarray(images[0].data[0]) / 65535, result.image, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(labels[0].data[0]), result.binary_mask.astype(np.uint8))
    assert labels[0].metadata["color"][1] == pytest.approx([255 / 255, 80 / 255, 0, 160 / 255])


def test_a_result_needs_its_image(tmp_path):
    store = open_store(tmp_path / "r.zarr")
    name = store.claim(tmp_path / "a.tif")
    before = snapshot(store.path)
    missing = make_result(tmp_path / "a.tif")
    missing.image = None
    with pytest.raises(SemtileError, match="no image"):
        store.write(name, missing)
    other_shape = make_result(tmp_path / "a.tif")
    other_shape.image = other_shape.image[:-2]
    with pytest.raises(SemtileError, match="same shape"):
        store.write(name, other_shape)
    lazy = make_result(tmp_path / "a.tif")
    as_zarr = zarr.create_array(store=str(tmp_path / "image.zarr"), data=lazy.image)  # zarr in, as the pipeline may
    assert snapshot(store.path) == before
    lazy.image = as_zarr
    store.write(name, lazy)
    lazy.image = np.asarray(as_zarr[...])
    assert_same(store.read(name), lazy)

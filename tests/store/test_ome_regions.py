"""A result written region by region (large scans, several writers) is the same bytes as one written whole."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from semtile.errors import SemtileError
from semtile.store import ImageResult, OmeZarrStore
from semtile.store.ome_zarr import CHUNK, level_shapes, write_region


def _result(source, shape, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape, dtype=np.float32)
    fields = dict(source=Path(source), mask=mask, binary_mask=mask >= 0.7, class_probs=np.array([0.2, 0.8], np.float32),
                  labels=[1, 2], label=2, adhesive_ratio=float((mask >= 0.7).mean()),
                  attrs={"pixel_size_m": 5e-9}, image=rng.random(shape, dtype=np.float32), record={"k": 1})
    fields.update(overrides)
    return ImageResult(**fields)


def _arrays(path):
    group = zarr.open_group(str(path), mode="r")
    out = {}
    def walk(g, prefix):
        for key, node in g.members():
            if isinstance(node, zarr.Array):
                out[prefix + key] = node[...]
            else:
                walk(node, prefix + key + "/")
    walk(group, "")
    return out, dict(group.attrs)


@pytest.mark.parametrize("levels", [1, 2])
def test_regions_equal_a_whole_write(tmp_path, levels):
    shape = (2 * CHUNK * 2**levels + 77, CHUNK * 2**levels + 5)  # partial regions at the bottom and right
    result = _result(tmp_path / "scan.tif", shape)
    store = OmeZarrStore(tmp_path / "r.zarr")
    store.write(store.claim(result.source), result)

    staged = store.stage(shape, 5e-9)
    step = CHUNK * 2**levels
    for y0 in range(0, shape[0], step):  # any order, any writer
        for x0 in reversed(range(0, shape[1], step)):
            sl = np.s_[y0: y0 + step, x0: x0 + step]
            write_region(staged, y0, x0, image=result.image[sl], binary_mask=result.binary_mask[sl],
                         mask=result.mask[sl], levels=levels)
    other = OmeZarrStore(tmp_path / "s.zarr")
    name = other.claim(result.source)
    other.commit(name, staged, result, built_levels=levels)
    assert not staged.exists()

    whole, whole_attrs = _arrays(tmp_path / "r.zarr" / name)
    parts, parts_attrs = _arrays(tmp_path / "s.zarr" / name)
    assert sorted(whole) == sorted(parts) and len(level_shapes(shape)) >= 3
    for key in whole:
        np.testing.assert_array_equal(parts[key], whole[key], err_msg=key)
    for attrs in (parts_attrs, whole_attrs):  # the one difference: results written whole are sharded
        assert attrs["semtile"]["storage"].pop("shard") in (None, 4096)
    assert parts_attrs == whole_attrs
    assert other.read(name).adhesive_ratio == result.adhesive_ratio


def test_a_misaligned_region_is_refused(tmp_path):
    store = OmeZarrStore(tmp_path / "r.zarr")
    staged = store.stage((1500, 1500))
    tile = np.zeros((100, 100), np.float32)
    with pytest.raises(ValueError, match="aligned"):
        write_region(staged, 100, 0, image=tile, binary_mask=tile > 0, mask=tile, levels=0)


def test_a_staged_result_is_invisible_until_committed_and_removed_when_its_writer_is_gone(tmp_path):
    store = OmeZarrStore(tmp_path / "r.zarr")
    staged = store.stage((600, 600))
    assert store.names() == []
    assert store.clean_stale() == 0  # this process is alive: its staged result stays
    assert staged.exists()
    kind, token, rest = staged.name.split("~")
    dead = staged.with_name(f"{kind}~{'0' * 32}~{rest}")  # a writer whose lease is gone
    staged.rename(dead)
    assert store.clean_stale() == 1 and not dead.exists()
    with pytest.raises(SemtileError, match="read-only"):
        OmeZarrStore(tmp_path / "r.zarr", mode="r").stage((10, 10))

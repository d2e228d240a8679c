import csv

import pytest

from semtile.errors import DatasetError
from semtile.io.dataset import parse_split, read_labels, split_samples


def make(tmp_path, per_label=10, labels=3, split_column=None):
    rows = []
    for t in range(labels):
        for i in range(per_label):
            name = f"t{t}_{i}.tif"
            (tmp_path / name).write_bytes(b"")
            rows.append([name, t] + ([split_column(t, i)] if split_column else []))
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["path", "label"] + (["split"] if split_column else []))
        w.writerows(rows)
    return read_labels(tmp_path)


def test_stratified_seeded_split(tmp_path):
    samples = make(tmp_path, per_label=50, labels=4)
    split = split_samples(samples, parse_split("40,5,5"), seed=3)
    assert [len(split[k]) for k in ("train", "val", "test")] == [160, 20, 20]
    for name in ("train", "val", "test"):
        per = {t: sum(samples[i].label == t for i in split[name]) for t in range(4)}
        assert len(set(per.values())) == 1  # every label split the same way
    assert set(split["train"]).isdisjoint(split["val"]) and set(split["val"]).isdisjoint(split["test"])
    assert split == split_samples(samples, parse_split("40,5,5"), seed=3)
    assert split != split_samples(samples, parse_split("40,5,5"), seed=4)


def test_small_labels_and_given_splits(tmp_path):
    samples = make(tmp_path, per_label=3, labels=2)
    split = split_samples(samples)
    assert [len(split[k]) for k in ("train", "val", "test")] == [2, 2, 2]
    given = make(tmp_path / "g" if (tmp_path / "g").mkdir() is None else tmp_path, per_label=2, labels=2,
                 split_column=lambda t, i: "train" if i == 0 else "test")
    split = split_samples(given)
    assert len(split["train"]) == 2 and len(split["test"]) == 2 and not split["val"]


def test_bad_split_values():
    for bad in ("1,2", "a,b,c", "0,5,5", "-1,1,1"):
        with pytest.raises(DatasetError):
            parse_split(bad)
    assert parse_split("80,10,10") == pytest.approx((0.8, 0.1, 0.1))

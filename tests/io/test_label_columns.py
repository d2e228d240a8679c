"""labels.csv columns: ``path`` or ``file``, other names by ``path_column`` / ``label_column``, refusals that list
the columns found (the dataset reader and the answers reader alike)."""

from __future__ import annotations

import re

import pytest

from semtile.errors import DatasetError
from semtile.io.dataset import label_columns, read_labels
from semtile.results.scores import read_answers


def write(folder, header: str, rows: list[str]):
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (folder / row.split(",")[0]).write_bytes(b"")
    (folder / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder


def test_a_file_column_is_the_path_column_and_other_columns_are_ignored(tmp_path):
    data = write(tmp_path, "file,label,label_id,label_name", ["a.tif,CS,1,Silica", "b.tif,NiO,3,Nickel"])
    samples = read_labels(data)
    assert [(s.path.name, s.label) for s in samples] == [("a.tif", "CS"), ("b.tif", "NiO")]
    assert label_columns(["path", "file", "label"], "x") == ("path", "label")  # path wins over file


def test_other_column_names_are_given(tmp_path):
    data = write(tmp_path, "image,label,label_id", ["a.tif,CS,1", "b.tif,NiO,3"])
    samples = read_labels(data, path_column="image", label_column="label_id")
    assert [(s.path.name, s.label) for s in samples] == [("a.tif", 1), ("b.tif", 3)]


def test_the_refusal_names_the_file_and_lists_the_columns_found(tmp_path):
    data = write(tmp_path, "image,class", ["a.tif,1"])
    csv_path = re.escape(str(data / "labels.csv"))
    with pytest.raises(DatasetError, match=f"{csv_path}: needs an image path column 'path' or 'file' and a label "
                                           "column 'label'; found the columns: image, class"):
        read_labels(data)
    with pytest.raises(DatasetError, match=r"'kind' \(--label-column\); found the columns: image, class"):
        read_labels(data, path_column="image", label_column="kind")
    with pytest.raises(DatasetError, match=r"'where' \(--path-column\); found the columns: image, class"):
        read_labels(data, path_column="where", label_column="class")
    assert [s.label for s in read_labels(data, path_column="image", label_column="class")] == [1]


def test_answers_take_the_same_columns(tmp_path):
    write(tmp_path, "file,label", ["a.tif,2"])
    assert read_answers(tmp_path / "labels.csv") == {(tmp_path / "a.tif").resolve(): 2}
    (tmp_path / "expert.csv").write_text("image,answer\nmissing.tif,1\n")
    assert read_answers(tmp_path / "expert.csv", path_column="image", label_column="answer") == {
        (tmp_path / "missing.tif").resolve(): 1}
    with pytest.raises(DatasetError, match="found the columns: image, answer"):
        read_answers(tmp_path / "expert.csv")

"""The per-run CSV table and where it goes by default."""

from __future__ import annotations

import csv
from pathlib import Path

from semtile.store import RUN_COLUMNS, RunTable, default_csv_path


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_header_then_one_row_per_add_each_readable_at_once(tmp_path):
    path = tmp_path / "new" / "folder" / "r.csv"  # parents are created
    with RunTable(path) as table:
        assert read_rows(path) == [list(RUN_COLUMNS)]
        table.add(path="/data/a, b.tif", status="ok", label=3, adhesive_ratio="0.250000", pixel_size_m=1e-7,
                  databar_rows=24, error=None)
        assert read_rows(path)[1] == ["/data/a, b.tif", "ok", "3", "0.250000", "1e-07", "24", ""]
        table.add(path="/data/c.tif", status="error", error='truncated: "half" a file\nsecond line')
        rows = read_rows(path)  # before close: a crash keeps what finished
        assert len(rows) == 3
        assert rows[2] == ["/data/c.tif", "error", "", "", "", "", 'truncated: "half" a file\nsecond line']
    assert len(read_rows(path)) == 3


def test_none_and_unknown_keys_leave_cells_empty(tmp_path):
    with RunTable(tmp_path / "r.csv") as table:
        table.add(path="x.tif", status="ok", label=None, adhesive_ratio=0.0, databar_rows=0, extra="ignored")
    header, row = read_rows(tmp_path / "r.csv")
    assert dict(zip(header, row)) == {"path": "x.tif", "status": "ok", "label": "", "adhesive_ratio": "0.0",
                                      "pixel_size_m": "", "databar_rows": "0", "error": ""}


def test_a_new_run_starts_a_new_table(tmp_path):
    with RunTable(tmp_path / "r.csv") as table:
        table.add(path="old.tif", status="ok")
    with RunTable(tmp_path / "r.csv"):
        pass
    assert read_rows(tmp_path / "r.csv") == [list(RUN_COLUMNS)]


def test_default_csv_path():
    assert default_csv_path(Path("out/r.zarr")) == Path("out/r.csv")
    assert default_csv_path(Path("out/results")) == Path("out/results.csv")
    assert default_csv_path(Path("/x/run.2024.zarr")) == Path("/x/run.2024.csv")
    assert default_csv_path("r.zarr") == Path("r.csv")

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
        assert read_rows(path)[1] == ["/data/a, b.tif", "ok", "3", "0.250000", "1e-07", "24", "", ""]
        table.add(path="/data/c.tif", status="error", error='truncated: "half" a file\nsecond line')
        rows = read_rows(path)  # before close: a crash keeps what finished
        assert len(rows) == 3
        assert rows[2] == ["/data/c.tif", "error", "", "", "", "", 'truncated: "half" a file\nsecond line', ""]
    assert len(read_rows(path)) == 3


def test_none_and_unknown_keys_leave_cells_empty(tmp_path):
    with RunTable(tmp_path / "r.csv") as table:
        table.add(path="x.tif", status="ok", label=None, adhesive_ratio=0.0, databar_rows=0, extra="ignored")
    header, row = read_rows(tmp_path / "r.csv")
    assert dict(zip(header, row)) == {"path": "x.tif", "status": "ok", "label": "", "adhesive_ratio": "0.0",
                                      "pixel_size_m": "", "databar_rows": "0", "error": "", "run_id": ""}


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


def test_a_run_id_table_is_never_overwritten_and_stamps_its_rows(tmp_path):
    with RunTable(tmp_path / "runs" / "1.csv", run_id="1") as table:
        table.add(path="a.tif", status="skipped")
    assert read_rows(tmp_path / "runs" / "1.csv")[1][-1] == "1"
    import pytest

    with pytest.raises(FileExistsError):
        RunTable(tmp_path / "runs" / "1.csv", run_id="1")


def test_current_table_comes_from_the_store_and_the_latest_failures(tmp_path):
    import numpy as np

    from semtile.store import ImageResult, open_store
    from semtile.store.table import runs_folder, write_current_table

    store = open_store(tmp_path / "r.zarr")
    good, bad, healed = (tmp_path / f"{n}.tif" for n in ("good", "bad", "healed"))
    for path in (good, bad, healed):
        path.write_bytes(b"x")
    mask = np.full((8, 8), 0.75, np.float32)
    for path in (good, healed):
        store.write(store.claim(path), ImageResult(source=path, mask=mask, binary_mask=mask > 0.5,
                                                   class_probs=np.array([1.0], np.float32), labels=[0], label=0,
                                                   adhesive_ratio=1.0, image=mask, record={"run_id": "r2"}))
    csv_path = tmp_path / "r.csv"
    with RunTable(runs_folder(csv_path) / "r1.csv", run_id="r1") as table:
        table.add(path=str(bad), status="error", error="truncated")
        table.add(path=str(healed), status="error", error="was broken once")
    assert write_current_table(csv_path, store) == 3
    with csv_path.open(newline="") as handle:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(handle)}
    assert rows["good.tif"]["status"] == rows["healed.tif"]["status"] == "ok"
    assert rows["good.tif"]["run_id"] == "r2" and rows["good.tif"]["adhesive_ratio"] == "1.000000"
    assert rows["bad.tif"]["status"] == "error" and rows["bad.tif"]["error"] == "truncated"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

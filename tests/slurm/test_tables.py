"""``semtile tables STORE``: results.csv again, from the results and every run's table (no SLURM needed)."""

from __future__ import annotations

import csv
import shutil

from click.testing import CliRunner

from semtile.cli.main import main


def test_tables_writes_the_table_of_a_store(tmp_path, slurm_reference, slurm_scans):
    store = tmp_path / "copy.zarr"
    shutil.copytree(slurm_reference, store)
    runs = slurm_reference.with_name("local.runs")
    shutil.copytree(runs, tmp_path / "copy.runs")
    # an input that failed in a later run (another array task) and has no result: it is listed as failed
    with (tmp_path / "copy.runs" / "99999999T000000.000000Z-host-1-abcdef.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "status", "error", "run_id"])
        writer.writeheader()
        writer.writerow({"path": str(tmp_path / "broken.tif"), "status": "error", "error": "not a TIFF", "run_id": "x"})
    result = CliRunner().invoke(main, ["tables", str(store)])
    assert result.exit_code == 0, result.output
    assert f"{len(slurm_scans) + 1} rows, {len(slurm_scans)} ok, 1 failed (from 2 run tables)" in result.output
    with (tmp_path / "copy.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["status"] for r in rows) == ["error"] + ["ok"] * len(slurm_scans)
    assert not list(tmp_path.glob(".copy.csv.*.tmp"))  # written whole, renamed into place

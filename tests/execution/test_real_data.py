"""Real microscope files from ../shared/data (skipped where the checkout has none)."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from semtile.cli.main import main

from shared_paths import shared_data


def test_fei_and_zeiss_scans_process_with_their_bars_and_pixel_sizes(tiny_bundle, tmp_path):
    lung = shared_data("lungcells-fei-sem")
    vendor = shared_data("vendor-tiff-samples")
    with (lung / "labels.csv").open(newline="") as handle:
        facts = {r["file"].split("/")[-1]: r for r in csv.DictReader(handle)}
    picks = [next(n for n, r in sorted(facts.items()) if r["dtype"] == dtype) for dtype in ("uint8", "uint16")]
    out = tmp_path / "real.zarr"
    result = CliRunner().invoke(main, ["--log-json", "process", *(str(lung / "images" / p) for p in picks), str(vendor),
                                       "--out", str(out), "--model", str(tiny_bundle)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    with (tmp_path / "real.csv").open(newline="") as handle:
        rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(handle)}
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows.values())
    for name in picks:
        assert int(rows[name]["databar_rows"]) == 79
        assert float(rows[name]["pixel_size_m"]) == pytest.approx(float(facts[name]["pixel_size_m"]), rel=1e-4)
    assert int(rows["test_tiff_Zeiss_SEM_1k.tif"]["databar_rows"]) == 77
    assert float(rows["test_tiff_Zeiss_SEM_1k.tif"]["pixel_size_m"]) == pytest.approx(2.615e-6)
    assert int(rows["ZEISS_SEM_multipage.tif"]["databar_rows"]) == 0
    assert int(rows["FEI-Helios-Ebeam-8bits.tif"]["databar_rows"]) == 29
    from semtile.store import open_store

    assert open_store(out, mode="r").read(picks[0].removesuffix(".tif")).mask.shape == (1024, 1536)

"""What the TIFF reader tells: which page of a multi-page file it uses (once per scan), and that a file cut short
is truncated (named, wherever the cut falls: header, directory, tag values, image data)."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import tifffile
from structlog.testing import capture_logs

from semtile.errors import UnreadableImageError
from semtile.io.tiff import open_scan

from scan_samples import texture


def page_events(logs):
    return [e for e in logs if "pages, using page" in e["event"]]


def test_a_multi_page_tiff_says_which_page_once(tmp_path):
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.stack([texture(64, 48), texture(64, 48)]))
    with capture_logs() as logs:
        for _ in range(3):  # a scan opened again (a region, a retry) is not logged again
            open_scan(path, databar_rows=0).close()
    assert [(e["event"], e["file"], e["log_level"]) for e in page_events(logs)] == [
        ("2 pages, using page 0 (--page)", str(path), "info")]
    with capture_logs() as logs:
        open_scan(path, page=1, databar_rows=0).close()
    assert [e["event"] for e in page_events(logs)] == ["2 pages, using page 1 (--page)"]


def test_a_single_page_tiff_says_nothing_of_pages(tmp_path):
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, texture(64, 48))
    with capture_logs() as logs:
        open_scan(path, databar_rows=0).close()
    assert page_events(logs) == []


@pytest.mark.parametrize("layout", [{}, {"tile": (32, 32)}, {"compression": "zlib"}, {"rowsperstrip": 1},
                                    {"bigtiff": True}, {"description": "x" * 300, "metadata": None}])
def test_every_cut_says_truncated_and_names_the_file(tmp_path, layout):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, texture(100, 120), **layout)
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    logging.disable(logging.WARNING)  # tifffile's own complaints about the cut files
    try:
        for n in sorted({*range(1, 400, 7), *range(1, len(data), max(1, len(data) // 60))}):
            cut.write_bytes(data[:n])
            with pytest.raises(UnreadableImageError, match=rf"^{re.escape(str(cut))}: truncated: "):
                with open_scan(cut) as scan:
                    scan.gray().compute()
    finally:
        logging.disable(logging.NOTSET)

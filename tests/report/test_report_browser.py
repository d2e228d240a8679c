"""The report in a real browser: headless Chromium (Debian's ``chromium``) driven by playwright.

Skips cleanly where playwright or chromium is missing or chromium cannot
start. Never ``playwright install``: the browser is the system's. Set
``SEMTILE_CHROMIUM`` to use another binary, and ``SEMTILE_REPORT_SCREENSHOT``
to keep the screenshot this test takes.
"""

from __future__ import annotations

import os
import shutil
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semtile.report import build_report
from semtile.results import open_results

from report_run import processed_run

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

# The machine's closed network refuses many connections: Chromium is kept from trying any.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BLANK_VARIANCE = 25.0  # gray-level variance below which a picture counts as blank (a flat figure is ~0)


def chromium_path() -> str | None:
    found = os.environ.get("SEMTILE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and Path(found).exists() else None


# Told at collection, before the session's fixtures train a model for nothing.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium)")]


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, timeout=60_000)
        except sync_api.Error as exc:
            pytest.skip(f"chromium at {path} does not start here: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_dataset, tiny_bundle):
    folder = tmp_path_factory.mktemp("browser-run")
    run = processed_run(folder, tiny_dataset, tiny_bundle)
    build_report(run.store, folder / "report", labels_csv=run.labels, expert_csv=run.expert)
    return run, folder / "report" / "index.html"


def variance(png: bytes) -> float:
    return float(np.asarray(Image.open(BytesIO(png)).convert("L"), dtype=np.float64).var())


def test_the_report_loads_without_errors_with_every_row_and_no_blank_figure(browser, report, tmp_path):
    run, index = report
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.goto(index.as_uri(), wait_until="load")
    page.wait_for_selector("body[data-ready=true]")
    # Every row is drawn (fewer images than a page) and they are the store's.
    names = page.eval_on_selector_all("#images tbody tr", "rows => rows.map(r => r.dataset.name)")
    assert len(names) == run.images == len(open_results(run.store))
    assert sorted(names) == open_results(run.store).names
    assert page.inner_text("#page-info") == f"1–{run.images} of {run.images}"
    # Every thumbnail loads (lazy: scrolled into view first), and no figure is blank.
    for thumb in page.query_selector_all("#images img.thumb"):
        thumb.scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('#images img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    figures = page.query_selector_all("img.figure")
    assert len(figures) == 5  # distribution, ratio against label, two confusion matrices, accuracy per label
    for figure in figures:
        assert figure.evaluate("i => i.complete && i.naturalWidth > 100")
        assert variance(figure.screenshot()) > BLANK_VARIANCE, figure.get_attribute("id")
    shot = page.screenshot(full_page=True)
    assert variance(shot) > BLANK_VARIANCE
    (tmp_path / "report.png").write_bytes(shot)
    if os.environ.get("SEMTILE_REPORT_SCREENSHOT"):
        Path(os.environ["SEMTILE_REPORT_SCREENSHOT"]).write_bytes(shot)
    assert problems == []
    page.close()


def test_the_table_sorts_filters_pages_and_opens_a_larger_view_with_maps(browser, report):
    run, index = report
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(index.as_uri(), wait_until="load")
    page.wait_for_selector("body[data-ready=true]")
    ratios = "rows => rows.map(r => parseFloat(r.children[%d].textContent))"
    column = page.eval_on_selector_all("#images thead th", "ths => ths.map(t => t.dataset.key || '')").index("ratio")
    # Each click is awaited by the header's state it sets (a loaded machine may deliver it late); a lost click
    # times out here.
    page.click("#images th[data-key=ratio]")
    page.wait_for_selector("#images th[data-key=ratio][aria-sort=ascending]")
    ascending = page.eval_on_selector_all("#images tbody tr", ratios % column)
    assert ascending == sorted(ascending) and len(ascending) == run.images
    page.click("#images th[data-key=ratio]")
    page.wait_for_selector("#images th[data-key=ratio][aria-sort=descending]")
    assert page.eval_on_selector_all("#images tbody tr", ratios % column) == sorted(ascending, reverse=True)
    page.select_option("#page-size", "25")
    page.fill("#filter", run.map_owner)
    page.wait_for_function("document.querySelectorAll('#images tbody tr').length === 1")
    assert "(filtered from 8)" in page.inner_text("#page-info")
    page.click(f"#images tr[data-name='{run.map_owner}'] a.view-link")
    page.wait_for_selector("#viewer[open]")
    assert page.inner_text("#viewer-title") == run.map_owner
    toggles = page.eval_on_selector_all("#viewer-layers label", "ls => ls.map(l => l.textContent.trim())")
    assert toggles == ["adhesive mask", "heat"]
    page.check("#viewer-layers label:nth-child(2) input")
    page.wait_for_function("[...document.querySelectorAll('#viewer-stack img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.eval_on_selector_all("#viewer-stack img.layer", "ls => ls.map(l => l.style.display)") == ["", ""]
    assert variance(page.locator("#viewer-stack").screenshot()) > BLANK_VARIANCE
    page.click("#viewer-close")
    assert page.eval_on_selector("#viewer", "d => d.open") is False
    assert errors == []
    page.close()


def test_the_table_fits_a_1400_pixel_window_with_its_maps_column(browser, tmp_path):
    """Long file names (as the public lung-cell scans have), two parameter sets, a maps column and times: the
    images table needs no sideways scroll in a 1400-pixel window."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "results"))
    from semtile.store import open_store

    from sample_results import add_heat_map, sample_result

    scans = tmp_path / "scans"
    scans.mkdir()
    store_path = tmp_path / "r.zarr"
    store = open_store(store_path)
    names = []
    for i in range(3):
        source = scans / f"NiO_Bottom_of_Insert_DC_02052021_5KV_1200_showing_activity_ETD-HV_5_{i}_long_name.tif"
        source.write_bytes(b"")
        result = sample_result(source, i, shape=(120, 160))
        result.attrs["provenance"]["parameters"] = {"tile": 64, "halo": 8, "threshold": 0.3 + 0.2 * (i % 2)}
        names.append(store.claim(source))
        store.write(names[-1], result)
    for name in names:
        add_heat_map(store_path, name, shape=(120, 160))
    index = build_report(store_path, tmp_path / "report").index
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(index.as_uri(), wait_until="load")
    page.wait_for_selector("body[data-ready=true]")
    keys = page.eval_on_selector_all("#images thead th", "ths => ths.map(t => t.dataset.key || '')")
    assert {"maps", "sec", "params"} <= set(keys), keys
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth,"
                           " document.querySelector('#images').getBoundingClientRect().right]")
    page_width, window_width, table_right = widths
    assert page_width <= window_width and table_right <= window_width, widths
    page.close()

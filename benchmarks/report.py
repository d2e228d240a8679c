"""Time ``semtile report`` on thousands of tiny images, and Chromium opening the page it writes.

    python benchmarks/report.py [--images 2000] [--size 64] [--work DIR [--reuse]] [--process] [--json out.json]
    python benchmarks/report.py --screenshot INDEX.html --out docs/report.png   # a picture of any report

The run: ``--images`` synthetic etched-copper frames of ``--size`` pixels
(``semtile.synth``), 16 labels. By default their results are written straight
into an OME-Zarr store through the store's own writer (``OmeZarrStore.write``:
the same groups, pyramids and labels ``semtile process`` writes), the mask
being the synthetic truth, with provenance and timings as ``process`` records
them, a run table with 1% failures and 1% skipped inputs, and a heat map in
ten results: processing 2,000 images through the model would time the engine,
not the report. ``--process`` instead writes the frames as TIFFs and runs
``semtile process`` over them (the built-in model).

Then ``semtile report STORE --out REPORT --labels labels.csv`` runs as a
command (a fresh Python: imports included), and Chromium (Debian's
``chromium``, driven by playwright, never downloaded) opens ``index.html``:
the time to the load event, and to a table showing every row.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LABELS = 16


def builtin_model_facts() -> dict:
    folder = ROOT / "semtile" / "models" / "builtin"
    cards = {kind: json.loads((folder / f"{kind}.json").read_text()) for kind in ("classifier", "segmenter")}
    return {"source": "builtin",
            **{kind: {"path": str(folder / f"{kind}.pt"), "sha256": card["sha256"],
                      "architecture": card["architecture"]} for kind, card in cards.items()}}


def frames(n: int, size: int, seed: int = 0):
    """(index, label, uint8 frame with data bar, truth mask, bar rows) of ``n`` synthetic scans."""
    from semtile.science.hypotheses import hypothesis_values
    from semtile.synth import synth_surface

    g = hypothesis_values("sqrt", LABELS)
    rng = np.random.default_rng(seed)
    rows = size + max(24, size // 16)  # the valid area is size x size once the data bar is cut
    for i in range(n):
        label = i % LABELS
        image, mask, bar = synth_surface(rng, (rows, size), float(g[label]))
        yield i, label, image, mask, bar


def write_store(work: Path, n: int, size: int) -> tuple[Path, Path]:
    """The results of ``n`` scans written straight into ``work/runs.zarr``; returns the store and labels.csv."""
    from semtile.store import ImageResult, RunTable, default_csv_path, open_store
    from semtile.store.provenance import package_versions
    from semtile.store.table import runs_folder

    store_path, scans = work / "runs.zarr", work / "scans"
    scans.mkdir(parents=True)
    store = open_store(store_path)
    model, versions = builtin_model_facts(), package_versions()
    run_id = "20260101T000000.000000Z-bench-1-000000"
    labels_rows = []
    with RunTable(runs_folder(default_csv_path(store_path)) / f"{run_id}.csv", run_id) as table:
        for i, label, image, mask, bar in frames(n, size):
            source = scans / f"scan_{i:05d}.tif"
            labels_rows.append((source.name, label))
            if i % 100 == 7:
                table.add(path=str(source), status="error", error=f"{source}: not a TIFF file (synthetic failure)")
                continue
            if i % 100 == 13:
                table.add(path=str(source), status="skipped")
                continue
            valid = image[: image.shape[0] - bar].astype(np.float32) / 255
            truth = mask[: image.shape[0] - bar] > 0
            probability = np.where(truth, 0.9, 0.1).astype(np.float32)
            ratio = float(truth.mean())
            probs = np.full(LABELS, 0.02, np.float32)
            probs[label] = 1 - 0.02 * (LABELS - 1)
            attrs = {"label_rule": "median", "databar_rows": int(bar), "databar_source": "detected",
                     "pixel_size_m": 1e-7, "pixel_size_source": "semtile", "frame_shape": list(image.shape),
                     "adhesive_ratio_soft": float(probability.mean()), "tiles": 1,
                     "timings": {"read": 0.002, "infer": 0.02, "stitch": 0.001, "write": 0.01},
                     "provenance": {"created": "2026-01-01T00:00:00+00:00",
                                    "input": {"path": str(source), "sha256": f"{i:064x}"}, "model": model,
                                    "engine": {"name": "torch-cpu", "precision": "f32", "device": "cpu"},
                                    "versions": versions,
                                    "parameters": {"tile": 256, "halo": 32, "threshold": 0.5}}}
            source.touch()
            store.write(store.claim(source), ImageResult(
                source=source, mask=probability, binary_mask=truth, class_probs=probs, labels=list(range(LABELS)),
                label=label, adhesive_ratio=ratio, attrs=attrs, image=valid,
                record={"format": "bench/1", "run_id": run_id}))
            table.add(path=str(source), status="ok", label=label, adhesive_ratio=f"{ratio:.6f}",
                      pixel_size_m=1e-7, databar_rows=int(bar))
    add_heat_maps(store_path, 10)
    return store_path, write_labels(work, labels_rows)


def add_heat_maps(store_path: Path, count: int) -> None:
    import zarr

    from semtile.store import open_store

    for name in open_store(store_path, mode="r").names()[:count]:
        group = zarr.open_group(str(store_path / name), mode="a", zarr_format=3)
        rows, cols = group["mask"].shape
        yy, xx = np.mgrid[0:rows, 0:cols]
        group.create_array("heat", data=np.exp(-((yy - rows / 2) ** 2 + (xx - cols / 3) ** 2) / (rows**2 / 8))
                           .astype(np.float32))


def write_labels(work: Path, rows: list[tuple[str, int]]) -> Path:
    path = work / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((f"scans/{name}", label) for name, label in rows)
    return path


def process_store(work: Path, n: int, size: int) -> tuple[Path, Path]:
    """The scans as TIFFs, run through ``semtile process`` (built-in model)."""
    import tifffile

    scans = work / "scans"
    scans.mkdir(parents=True)
    rows = []
    for i, label, image, _, _ in frames(n, size):
        tifffile.imwrite(scans / f"scan_{i:05d}.tif", image)
        rows.append((f"scan_{i:05d}.tif", label))
    store = work / "runs.zarr"
    subprocess.run([sys.executable, "-m", "semtile.cli.main", "--log-json", "process", str(scans), "--out", str(store)],
                   cwd=ROOT, check=False, stderr=subprocess.DEVNULL)
    add_heat_maps(store, 10)
    return store, write_labels(work, rows)


def open_in_chromium(index: Path, screenshot: Path | None = None) -> dict:
    """Seconds to the load event and to every row drawn; console errors seen."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("SEMTILE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        t0 = time.perf_counter()
        page.goto(index.as_uri(), wait_until="load")
        page.wait_for_selector("body[data-ready=true]")
        load = time.perf_counter() - t0
        navigation = page.evaluate("() => { const n = performance.getEntriesByType('navigation')[0];"
                                   " return {load: n.loadEventEnd / 1000, dom: n.domContentLoadedEventEnd / 1000}; }")
        rows_on_page = page.locator("#images tbody tr").count()
        total = int(page.get_attribute("#images", "data-total"))
        t1 = time.perf_counter()
        page.select_option("#page-size", "0")  # every row at once
        page.wait_for_function(f"document.querySelectorAll('#images tbody tr').length === {total}")
        all_rows = time.perf_counter() - t1
        t2 = time.perf_counter()
        page.click("#images th[data-key=ratio]")
        sort = time.perf_counter() - t2
        if screenshot is not None:
            page.screenshot(path=str(screenshot))
        browser.close()
    return {"load_s": load, "navigation_load_s": navigation["load"], "dom_content_loaded_s": navigation["dom"],
            "rows_on_first_page": rows_on_page, "rows": total, "all_rows_s": all_rows,
            "sort_all_rows_s": sort, "console_errors": errors}


def screenshot(index: Path, out: Path, width: int = 1280, height: int = 2200) -> None:
    """A picture of a report as a reader first sees it: summary, figures, the first rows with their thumbnails."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("SEMTILE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(index.resolve().as_uri(), wait_until="load")
        page.wait_for_selector("body[data-ready=true]")
        for thumb in page.query_selector_all("#images img.thumb")[:20]:
            thumb.scroll_into_view_if_needed()
        page.wait_for_function("[...document.querySelectorAll('#images img.thumb')].slice(0, 20)"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(out), full_page=True, clip={"x": 0, "y": 0, "width": width, "height": height})
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="valid area of each scan, pixels a side")
    parser.add_argument("--work", type=Path, default=None, help="folder for the run (default: a temporary one)")
    parser.add_argument("--process", action="store_true", help="run semtile process instead of writing results")
    parser.add_argument("--reuse", action="store_true", help="time the report of the run already in --work")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--screenshot", type=Path, default=None, help="only take a screenshot of this index.html")
    parser.add_argument("--out", type=Path, default=None, help="where --screenshot writes its PNG")
    parser.add_argument("--height", type=int, default=2200, help="height of the --screenshot picture")
    args = parser.parse_args()
    if args.screenshot:
        screenshot(args.screenshot, args.out or Path("report.png"), height=args.height)
        print(f"wrote {args.out or 'report.png'}")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="semtile-report-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    reused = args.reuse and (work / "runs.zarr").is_dir()
    if reused:
        store, labels = work / "runs.zarr", work / "labels.csv"
    else:
        store, labels = (process_store if args.process else write_store)(work, args.images, args.size)
    setup = time.perf_counter() - t0
    report_dir = work / "report"
    command = [sys.executable, "-m", "semtile.cli.main", "--log-json", "report", str(store), "--out", str(report_dir),
               "--labels", str(labels)]
    t1 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    render = time.perf_counter() - t1
    if done.returncode:
        print(done.stdout, done.stderr, file=sys.stderr)
        return 1
    files = sum(1 for p in report_dir.rglob("*") if p.is_file())
    size_mb = sum(p.stat().st_size for p in report_dir.rglob("*") if p.is_file()) / 1e6
    browser = open_in_chromium(report_dir / "index.html")
    numbers = {"images": args.images, "results": browser["rows"], "size_px": args.size,
               "setup": "reused" if reused else "semtile process" if args.process else "written straight into the store",
               "setup_s": round(setup, 1), "report_s": round(render, 2), "report_files": files,
               "report_mb": round(size_mb, 1), "index_html_mb": round((report_dir / "index.html").stat().st_size / 1e6, 2),
               **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in browser.items()}, "work": str(work)}
    print(f"{numbers['results']} results ({args.images} inputs, {args.size}x{args.size} px; {numbers['setup']} "
          f"in {numbers['setup_s']} s)")
    print(f"semtile report: {numbers['report_s']} s ({files} files, {numbers['report_mb']} MB; "
          f"index.html {numbers['index_html_mb']} MB)")
    print(f"chromium: load event {numbers['load_s']} s (navigation timing {numbers['navigation_load_s']} s), "
          f"{numbers['rows_on_first_page']} rows on the first page; every row {numbers['all_rows_s']} s; "
          f"sorting them {numbers['sort_all_rows_s']} s; console errors {len(browser['console_errors'])}")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0 if not browser["console_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())

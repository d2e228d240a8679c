"""Inputs are checked and the run planned before anything heavy is imported: a wrong path, a batch whose
every input is refused and a rerun with nothing to do import no torch and build no engine."""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from click.testing import CliRunner

from semtile.cli.main import main
from semtile.engines import EngineSettings
from semtile.inference.options import ProcessOptions
from semtile.inference.segment import segment_pass, segment_pass_of_files
from semtile.models.io import load_bundle

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "openvino", "onnxruntime", "distributed")
OPTIONS = ["--tile", "64", "--halo", "8", "--engine", "torch-cpu"]
REPORT = (f"import atexit, json, sys; atexit.register(lambda: print('IMPORTED', json.dumps(sorted(m for m in {HEAVY!r} "
          "if m in sys.modules)), file=sys.__stdout__)); from semtile.cli.main import main; main()")


def semtile(*args) -> tuple[int, list[str], str]:
    """Run ``semtile ARGS`` in a fresh interpreter: its exit code, the heavy modules it imported, its stderr."""
    done = subprocess.run([sys.executable, "-c", REPORT, "--log-json", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    line = next(line for line in done.stdout.splitlines() if line.startswith("IMPORTED"))
    return done.returncode, json.loads(line.split(" ", 1)[1]), done.stderr


def header_bomb(path: Path) -> Path:
    """A valid 200x200 scan whose header then claims 100000x100000 pixels."""
    tifffile.imwrite(path, (np.random.default_rng(0).random((200, 200)) * 255).astype(np.uint8))
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", data, entry)[0]
        if tag in (256, 257):
            struct.pack_into("<HHII", data, entry, tag, 4, 1, 100_000)
    path.write_bytes(bytes(data))
    return path


def test_a_wrong_path_fails_before_anything_heavy(tmp_path):
    code, imported, err = semtile("process", tmp_path / "nonexistent", "--out", tmp_path / "x.zarr")
    assert code == 2 and "nonexistent" in err
    assert imported == []


def test_a_batch_of_refused_inputs_builds_no_engine(tmp_path, tiny_bundle):
    folder = tmp_path / "scans"
    folder.mkdir()
    header_bomb(folder / "bomb.tif")
    code, imported, err = semtile("process", folder, "--out", tmp_path / "r.zarr", "--model", tiny_bundle, *OPTIONS)
    assert code == 1, err
    assert "torch" not in imported and "distributed" not in imported, imported
    assert "FAILED" in err and "over the budget" in err
    runs = list((tmp_path / "r.runs").glob("*.csv"))
    rows = list(csv.DictReader(runs[0].open()))
    assert [(Path(r["path"]).name, r["status"]) for r in rows] == [("bomb.tif", "error")]
    assert "over the budget" in rows[0]["error"]


def test_a_rerun_with_nothing_to_do_imports_no_torch_and_skips_exactly_the_matching(tmp_path, tiny_dataset,
                                                                                   tiny_bundle):
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in sorted((tiny_dataset / "images").glob("*.tif"))[:2]:
        shutil.copy(path, folder / path.name)
    header_bomb(folder / "bomb.tif")
    args = ["process", folder, "--out", tmp_path / "r.zarr", "--model", tiny_bundle, *OPTIONS]
    first = CliRunner().invoke(main, ["--log-json", *map(str, args)], catch_exceptions=False)
    assert first.exit_code == 1 and "2 done, 0 skipped" in first.stderr, first.stderr
    code, imported, err = semtile(*args)
    assert code == 1 and "0 done, 2 skipped (already complete), 1 failed" in err, err
    assert "torch" not in imported, imported
    changed = CliRunner().invoke(main, ["--log-json", *map(str, args), "--threshold", "0.6"],
                                 catch_exceptions=False)
    assert "2 done, 0 skipped" in changed.stderr, changed.stderr  # another key: redone, not skipped


def test_the_pass_planned_from_the_cards_is_the_pass_of_the_loaded_bundle(tiny_bundle, tiny_dataset):
    options = ProcessOptions(tile=64, halo=8)
    settings = EngineSettings(precision="auto")
    planned = segment_pass_of_files(tiny_bundle, engine="torch-cpu", settings=settings, options=options)
    loaded = segment_pass(load_bundle(tiny_bundle), "torch-cpu", settings, options)
    assert planned.bundle is None and planned.key() == loaded.key()
    assert (planned.labels, planned.multiple, planned.sha256) == (loaded.labels, loaded.multiple, loaded.sha256)
    assert planned.provenance == loaded.provenance
    ready = planned.prepared(sorted((tiny_dataset / "images").glob("*.tif"))[:1])
    assert ready.bundle is not None and ready.provenance == loaded.provenance and ready.key() == loaded.key()
    assert planned.prepared([]) is planned  # nothing to do: nothing loaded

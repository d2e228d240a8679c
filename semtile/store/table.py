"""Run tables: one CSV per run (append-only, one row per image) and the current table of the store.

Each run writes its own table, ``<csv stem>.runs/<run id>.csv``, row by row
as images finish, so concurrent runs never share a file. At the end of a run
the current table (``results.csv``) is regenerated from the store: one row per
completed result, plus, for inputs with no result, the latest failure any run
recorded. It is written to a temporary file and renamed into place, so a
reader never sees half a table; writers take turns (a lock file beside it),
so of runs ending together (the tasks of a job array) the last to write read
the store after every other's results were in: the last to finish leaves the
complete table.
"""

from __future__ import annotations

import csv
import os
import socket
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from semtile.store.ownership import process_alive, process_start

__all__ = ["RunTable", "RUN_COLUMNS", "OPTIONAL_COLUMNS", "REPLACED_COLUMN", "run_columns", "default_csv_path",
           "runs_folder", "new_run_id", "run_alive", "running", "write_current_table"]

RUN_COLUMNS = ("path", "status", "label", "adhesive_ratio", "pixel_size_m", "databar_rows", "error", "run_id")
#: Columns a table gains when its run computed them (``semtile process --anomaly``).
OPTIONAL_COLUMNS = ("anomaly_fraction",)
#: A run's own table says, for each result it replaced, what the old one was made with ("threshold 0.5 (now 0.3)").
REPLACED_COLUMN = "replaced"


def run_columns(passes=()) -> tuple:
    """A run table's columns: the standard ones, ``replaced``, then those the run's passes fill (``anomaly_fraction``)."""
    extra = [c for p in passes for c in p.columns() if c not in RUN_COLUMNS]
    return (*RUN_COLUMNS, REPLACED_COLUMN, *dict.fromkeys(extra))


def default_csv_path(store: Path) -> Path:
    """The table beside a store: ``r.zarr`` -> ``r.csv``, ``out/results`` -> ``out/results.csv``."""
    store = Path(store)
    return store.with_name(store.stem + ".csv") if store.suffix else store.with_name(store.name + ".csv")


def runs_folder(csv_path: Path) -> Path:
    """Where the per-run tables of a current table live: ``r.csv`` -> ``r.runs/``."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + ".runs")


def new_run_id() -> str:
    """Sortable by start time, unique across hosts and processes."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


#: Runs going on in this process (a process may run several, one after another or at once).
_RUNNING: set[str] = set()


@contextmanager
def running(run_id: str):
    """Mark ``run_id`` as running in this process while the block runs (:func:`run_alive` asks)."""
    _RUNNING.add(run_id)
    try:
        yield
    finally:
        _RUNNING.discard(run_id)


def run_alive(run_id: str) -> bool | None:
    """Whether the run ``run_id`` (:func:`new_run_id`) still runs: its process on this host, started by then.

    None where that cannot be told (another host, an id of another shape). A
    process id reused by a process started after the run began is not the run.
    """
    stamp, _, rest = str(run_id).partition("-")
    parts = rest.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return None
    try:
        began = datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    pid = int(parts[1])
    if pid == os.getpid():
        return run_id in _RUNNING
    if not process_alive(pid):
        return False
    started = _started_at(pid)
    return started is None or started <= began + 2.0  # 2 s: clock ticks and the stamp taken after start


def _started_at(pid: int) -> float | None:
    """The start of process ``pid`` in seconds since the epoch (Linux), None where unknown."""
    ticks = process_start(pid)
    try:
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK") if ticks else None
    except (OSError, ValueError, StopIteration):
        return None


def _cells(row: dict, columns: tuple = RUN_COLUMNS) -> dict:
    return {k: ("" if row.get(k) is None else row.get(k)) for k in columns}


class RunTable:
    """One run's CSV, one row per image (``status``: ok, error or skipped), flushed as each image finishes."""

    def __init__(self, path: str | Path, run_id: str = "", columns: tuple = RUN_COLUMNS, replaced: dict | None = None):
        self.path, self.run_id, self.columns = Path(path), run_id, tuple(columns)
        #: input path (str) -> what the result this run replaces was made with, for the ``replaced`` column
        self.replaced = dict(replaced or {})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("x" if run_id else "w", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.columns)
        self._writer.writeheader()
        self._handle.flush()
        os.fsync(self._handle.fileno())  # a full disk shows here, before any work

    def add(self, **row) -> None:
        self._writer.writerow(_cells({"run_id": self.run_id, **row}, self.columns))
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RunTable:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def _table_lock(csv_path: Path):
    """One writer of ``csv_path`` at a time, across processes and hosts (POSIX locks work on NFS; a no-op
    where the folder cannot hold a lock file or locks are not supported)."""
    try:
        import fcntl

        handle = open(csv_path.with_name(f".{csv_path.name}.lock"), "a")
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        handle.close()  # releases the lock


def write_current_table(csv_path: Path, store) -> int:
    """Regenerate ``csv_path`` from ``store`` and the per-run tables beside it; return its row count."""
    csv_path = Path(csv_path)
    with _table_lock(csv_path):
        return _write_current_table(csv_path, store)


def _write_current_table(csv_path: Path, store) -> int:
    rows: dict[str, dict] = {}
    columns = list(RUN_COLUMNS)
    for name in store.names():
        result = store.read(name)
        attrs = result.attrs
        rows[str(result.source)] = {
            "path": str(result.source), "status": "ok", "label": result.label,
            "adhesive_ratio": f"{result.adhesive_ratio:.6f}", "pixel_size_m": attrs.get("pixel_size_m"),
            "databar_rows": attrs.get("databar_rows"), "run_id": (store.record(name) or {}).get("run_id")}
        fraction = attrs.get("anomaly_fraction")
        if isinstance(fraction, (int, float)):
            rows[str(result.source)]["anomaly_fraction"] = f"{fraction:.6f}"
            if "anomaly_fraction" not in columns:
                columns.append("anomaly_fraction")
    failures: dict[str, dict] = {}
    runs = runs_folder(csv_path)
    for table in sorted(runs.glob("*.csv")) if runs.is_dir() else []:
        with table.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("status") == "error":
                    failures[str(Path(row["path"]).resolve())] = row
                elif row.get("status") in ("ok", "skipped"):
                    failures.pop(str(Path(row["path"]).resolve()), None)
    for path, row in failures.items():
        rows.setdefault(path, row)
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    try:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(_cells(rows[k], tuple(columns)) for k in sorted(rows))
        os.replace(tmp, csv_path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)

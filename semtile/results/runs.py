"""The run tables beside a store, read back: every run's rows, the latest run, the failures that remain.

``semtile process`` writes one table per run (``<csv stem>.runs/<run id>.csv``,
see :mod:`semtile.store.table`); failures live only there, never in the store.
Run ids start with the run's UTC start time, so sorting the file names sorts
the runs by start.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from semtile.errors import SemtileError
from semtile.store.table import RUN_COLUMNS, runs_folder

__all__ = ["RunTables", "read_run_tables"]

STATUSES = ("ok", "error", "skipped")


@dataclass
class RunTables:
    """What the run tables of a store say.

    ``rows``: every row of every run (``RUN_COLUMNS`` plus ``run``, the run
    table's file stem), oldest run first. ``folder``: where they were read
    from (it may not exist: a store written without tables).
    """

    folder: Path
    rows: pd.DataFrame

    @property
    def run_ids(self) -> list[str]:
        """The runs, oldest first."""
        return list(dict.fromkeys(self.rows["run"])) if len(self.rows) else []

    @property
    def latest_id(self) -> str | None:
        ids = self.run_ids
        return ids[-1] if ids else None

    @property
    def latest(self) -> pd.DataFrame:
        """The rows of the latest run (empty when there is none)."""
        return self.rows[self.rows["run"] == self.latest_id].reset_index(drop=True)

    def counts(self, run: str | None = None) -> dict[str, int]:
        """``{"ok", "error", "skipped"}`` counts of one run (the latest by default)."""
        rows = self.latest if run is None else self.rows[self.rows["run"] == run]
        return {status: int((rows["status"] == status).sum()) for status in STATUSES}

    def failures(self, done: set[str] = frozenset()) -> pd.DataFrame:
        """Inputs whose latest row in any run is an error, less those in ``done`` (resolved paths with a result).

        The same rule ``results.csv`` follows: a later ok or skipped row clears a failure.
        Columns ``path``, ``error``, ``run``.
        """
        last: dict[str, dict] = {}
        for row in self.rows.to_dict("records"):
            if row["status"] in STATUSES:
                last[_resolved(row["path"])] = row
        failed = [{"path": path, "error": row["error"], "run": row["run"]}
                  for path, row in sorted(last.items()) if row["status"] == "error" and path not in done]
        return pd.DataFrame(failed, columns=["path", "error", "run"])


def _resolved(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):  # a symlink loop: keep the path as written
        return str(path)


def read_run_tables(csv_path: str | Path) -> RunTables:
    """The run tables of the current table ``csv_path`` (``r.csv`` -> ``r.runs/*.csv``).

    A missing folder gives no rows. A table that cannot be read, or lacks the
    ``path``/``status`` columns, raises SemtileError naming it: a report that
    silently dropped a run would undercount its failures.
    """
    folder = runs_folder(Path(csv_path))
    frames = []
    for table in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        try:
            with table.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames is None:  # an empty file: a run killed before its header
                    continue
                if not {"path", "status"} <= set(reader.fieldnames):
                    raise SemtileError(f"{table}: not a run table (needs the columns path and status, "
                                       f"found {reader.fieldnames})")
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise SemtileError(f"{table}: cannot read the run table ({exc})") from None
        frame = pd.DataFrame(rows, columns=list(dict.fromkeys([*RUN_COLUMNS, *reader.fieldnames])), dtype=object)
        frame["run"] = table.stem
        frames.append(frame)
    columns = [*RUN_COLUMNS, "run"]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns, dtype=object)
    rows = rows.fillna("")
    return RunTables(folder=folder, rows=rows[[*columns, *(c for c in rows.columns if c not in columns)]])

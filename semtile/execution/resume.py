"""Which scans a run must (re)do: completion records and the plan made from them.

Every result is stored with a *completion record*: what the input was (size,
modification time, sha256) and everything else that decides the output (the
model's sha256s, the engine and its precision, the parameters that change
masks, labels or ratios). A rerun compares each input's stored record with
the one it would write: equal means skip. The input is recognised by size and
modification time first; when they changed, its sha256 decides (a file copied
or touched without change is still skipped). The batch size and thread counts
are left out: they do not change a result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from semtile.io.discover import image_sha256
from semtile.store import ResultStore

__all__ = ["RECORD_FORMAT", "output_key", "input_identity", "completion_record", "Plan", "plan_run"]

RECORD_FORMAT = "semtile-completion/1"


def output_key(passes) -> dict:
    """Everything besides the input that decides a result, as stored in its record: each pass's part.

    The one place the key is made: the plan of a rerun (before any engine is
    built) and the record written with each result must agree exactly. A
    rerun with another model, engine, grid or threshold of any pass redoes
    the image.
    """
    key: dict = {"format": RECORD_FORMAT}
    for p in passes:
        key.update(p.key())
    return key


def input_identity(path: Path, sha256: str | None = None) -> dict:
    """Size, modification time (ns) and sha256 of an input file (ImageError when unreadable)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256 or image_sha256(path)}


def completion_record(path: Path, key: dict, sha256: str | None = None) -> dict:
    return {**key, "input": input_identity(path, sha256)}


def _same_input(path: Path, stored: dict) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_size != stored.get("size"):
        return False
    if st.st_mtime_ns == stored.get("mtime_ns"):
        return True
    try:  # touched or copied: the content decides
        return image_sha256(path) == stored.get("sha256")
    except Exception:  # noqa: BLE001 - unreadable now: let the run report it
        return False


@dataclass
class Plan:
    todo: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (input, name of its result)
    reasons: dict = field(default_factory=dict)  # input -> why it is (re)done


def plan_run(scans: list[Path], store: ResultStore, key: dict, *, force: bool = False) -> Plan:
    """Split ``scans`` into those to process and those whose stored result already matches ``key``."""
    plan = Plan()
    for path in scans:
        name = None if force else store.find(path)
        record = store.record(name) if name else None
        if force:
            why = "forced"
        elif record is None:
            why = "new"
        elif {k: record.get(k) for k in key} != key:
            why = "model, engine or parameters changed"
        elif not _same_input(path, record.get("input", {})):
            why = "input changed"
        else:
            plan.skipped.append((path, name))
            continue
        plan.todo.append(path)
        plan.reasons[path] = why
    return plan

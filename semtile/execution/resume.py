"""Which scans a run must (re)do: completion records and the plan made from them.

Every result is stored with a *completion record*: what the input was (size,
modification time, sha256) and everything else that decides the output (the
model's sha256s, the engine and its precision, the parameters that change
masks, labels or ratios). A rerun compares each input's stored record with
the one it would write: equal means skip. The input is recognised by size and
modification time first; when they changed, its sha256 decides (a file copied
or touched without change is still skipped). The batch size and thread counts
are left out: they do not change a result.

A result whose record was made with another key is replaced, and the run says
so: :func:`key_difference` names what changed, field by field ("threshold 0.5
(now 0.3)"). A result that another run still running wrote with another key is
never replaced: the input is reported as a conflict naming that run (see
docs/cli.md, "Reruns").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from semtile.errors import ImageError
from semtile.io.discover import image_sha256
from semtile.logs import get_logger
from semtile.store import ResultStore
from semtile.store.table import run_alive

__all__ = ["RECORD_FORMAT", "output_key", "input_identity", "completion_record", "Plan", "plan_run",
           "key_difference", "describe_difference", "ResultConflict", "live_conflict",
           "replaced_difference"]

RECORD_FORMAT = "semtile-completion/1"
log = get_logger("semtile.resume")


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


def _short(value) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256: enough to tell two models apart
    return "none" if value is None else str(value)


def _label(path: tuple[str, ...]) -> str:
    """A key field as users name it: ``threshold``, ``engine``, ``precision``, ``segmenter sha256``, ``anomaly tile``."""
    if path[:1] == ("parameters",):
        path = path[1:]
    elif path[:1] == ("engine",) and len(path) == 2:
        path = ("engine",) if path[1] == "name" else path[1:]
    elif path[:1] == ("model_sha256",):
        path = (*path[1:], "sha256")
    elif path == ("format",):
        path = ("record format",)
    return " ".join(p.replace("model_sha256", "model sha256") for p in path)


def key_difference(record: dict, key: dict) -> list[tuple[str, str, str]]:
    """What differs between a stored record and ``key``, field by field: (field, stored, now), in key order.

    Fields of the record that ``key`` lacks are left out (as the plan does: a
    result with an anomaly map still serves a run without one); a part of the
    key the record lacks entirely (e.g. ``anomaly`` added) is one entry.
    """
    found: list[tuple[str, str, str]] = []

    def walk(old, new, path):
        if isinstance(new, dict) and isinstance(old, dict):
            for k, v in new.items():
                walk(old.get(k), v, (*path, k))
        elif isinstance(new, dict) and old is None and path:
            found.append((_label(path), "", ""))  # the whole part is new
        elif old != new:
            found.append((_label(path), _short(old), _short(new)))

    walk(record, key, ())
    return found


def describe_difference(record: dict, key: dict, now: str = "now") -> str:
    """The difference in a few words: ``threshold 0.5 (now 0.3)``, ``no anomaly (now anomaly)``."""
    return ", ".join(f"no {f} ({now} {f})" if not old and not new else f"{f} {old} ({now} {new})"
                     for f, old, new in key_difference(record, key)) or "unchanged"


class ResultConflict(ImageError):
    """The stored result was made by another run still running, with another key: kept, this input not done."""


def _conflict(path, record: dict, key: dict) -> ResultConflict:
    return ResultConflict(path, f"not replaced: the stored result was made by run {record.get('run_id')}, still "
                                f"running, with {describe_difference(record, key, now='this run:')}; rerun when "
                                "that run is done, or use another store")


def _key_of(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("input", "run_id")}


def replaced_difference(stored: dict | None, record: dict) -> str | None:
    """What the stored result that ``record`` is about to replace was made with, when not with ``record``'s key."""
    key = _key_of(record)
    if not stored or {k: stored.get(k) for k in key} == key:
        return None
    return describe_difference(stored, key)


def live_conflict(path, stored: dict | None, record: dict) -> ResultConflict | None:
    """Whether writing ``record`` (with its ``run_id``) over ``stored`` would replace a live run's other result."""
    if not stored or not stored.get("run_id") or stored.get("run_id") == record.get("run_id"):
        return None
    key = _key_of(record)
    if {k: stored.get(k) for k in key} == key or run_alive(stored["run_id"]) is not True:
        return None
    return _conflict(path, stored, key)


@dataclass
class Plan:
    todo: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (input, name of its result)
    reasons: dict = field(default_factory=dict)  # input -> why it is (re)done
    replaced: dict = field(default_factory=dict)  # input -> what its stored result was made with: "threshold 0.5 (now 0.3)"
    conflicts: dict = field(default_factory=dict)  # input -> ResultConflict: a live run's result, left alone
    kept: dict = field(default_factory=dict)  # keep_existing: input -> how its skipped result differs from ``key``
    changes: dict = field(default_factory=dict)  # each difference in ``replaced`` -> key_difference, field by field

    def replaced_groups(self) -> dict[str, list[Path]]:
        """The inputs to replace, grouped by what differs."""
        groups: dict[str, list[Path]] = {}
        for path, difference in self.replaced.items():
            groups.setdefault(difference, []).append(path)
        return groups


def plan_run(scans: list[Path], store: ResultStore, key: dict, *, force: bool = False,
             keep_existing: bool = False, run_id: str = "") -> Plan:
    """Split ``scans`` into those to process and those whose stored result already matches ``key``.

    ``keep_existing``: skip every input that has a result, whatever it was made
    with. A result whose files do not match the manifest written with it
    (:meth:`ResultStore.verify`, quick) is redone whatever the key. A result of another run still running (not ``run_id``) made with
    another key goes to ``conflicts``, not ``todo``.
    """
    plan = Plan()
    for path in scans:
        name = None if force else store.find(path)
        record = store.record(name) if name else None
        damage = store.verify(name) if record is not None else []  # quick: sizes against the result's manifest
        if damage:
            plan.todo.append(path)
            plan.reasons[path] = f"stored result damaged: {damage[0]}"
            log.warning("result_damaged", path=str(path), name=name, damage=damage[0], problems=len(damage),
                        action="redone by this run")
            continue
        if keep_existing and record is not None:
            plan.skipped.append((path, name))
            if {k: record.get(k) for k in key} != key:
                plan.kept[path] = describe_difference(record, key, now="this run:")
            continue
        if force:
            why = "forced"
        elif record is None:
            why = "new"
        elif {k: record.get(k) for k in key} != key:
            conflict = live_conflict(path, record, {**key, "run_id": run_id})
            if conflict is not None:
                plan.conflicts[path] = conflict
                continue
            plan.replaced[path] = describe_difference(record, key)
            plan.changes.setdefault(plan.replaced[path], key_difference(record, key))
            why = f"model, engine or parameters changed: {plan.replaced[path]}"
        elif not _same_input(path, record.get("input", {})):
            why = "input changed"
        else:
            plan.skipped.append((path, name))
            continue
        plan.todo.append(path)
        plan.reasons[path] = why
    return plan

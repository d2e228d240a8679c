"""``semtile report``: one HTML page over the results of a store, readable offline.

The page is rendered with jinja2 from ``templates/report.html.j2``; its style
and script (sorting, filtering, paging, the larger view) are inlined, the
figures inlined as PNG data URIs, and the pictures of each image written
beside it (``thumbs/``, ``views/``, ``maps/``). Nothing is fetched from the
network. The table's rows travel as JSON inside the page and the script
draws one page of them at a time, so 10,000 images stay quick to open.

The report is built in a hidden folder beside ``out`` and renamed into place,
so a reader never sees half a report; an older report at ``out`` is replaced,
any other non-empty folder is refused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from semtile import __version__
from semtile.errors import SemtileError
from semtile.logs import get_logger
from semtile.models.naming import PARTS, builtin_caveat
from semtile.results import LabelScores, Results, describe_parameters, label_scores, open_results

__all__ = ["ReportOutcome", "build_report", "REPORT_FORMAT"]

REPORT_FORMAT = "semtile-report/1"
MARKER = "report.json"  # written last into every report: what makes a folder one of ours to replace
MAX_FAILURES_SHOWN = 1000
MAP_GALLERY = 12  # images shown per map in the maps section

log = get_logger("semtile.report")


@dataclass
class ReportOutcome:
    index: Path
    images: int
    failures: int
    seconds: float
    picture_errors: int


def _check_out(out: Path, store: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SemtileError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out):
        raise SemtileError(f"{out}: a folder that is not a semtile report; refusing to write into it")
    store, target = store.resolve(), out.resolve()
    if target == store or store in target.parents:
        raise SemtileError(f"{out}: inside the result store {store}; write the report elsewhere")


def _is_report(folder: Path) -> bool:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8")).get("format") == REPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _publish(staged: Path, out: Path) -> None:
    """Rename ``staged`` to ``out``; an older report there is moved aside first and removed after."""
    retired = None
    if out.exists():
        retired = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, retired)
    try:
        os.replace(staged, out)
    except BaseException:
        if retired is not None:
            os.replace(retired, out)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _plain(value):
    """A JSON-able plain value: numpy and pandas scalars to Python, NaN and NA to None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _label_list(results: Results, table: pd.DataFrame) -> list:
    labels = list(results.labels)
    for value in table["label"]:
        if value not in labels:
            labels.append(value)
    return labels


def _score_labels(table: pd.DataFrame, labels: list, column: str, answered: str = "label") -> LabelScores | None:
    judged = table[table[column].notna() & (table["status"] != "damaged")]  # a damaged result: its row's error
    if judged.empty:
        return None
    return label_scores(list(judged[column]), list(judged[answered]), labels)


def _facts(results: Results, summary: dict, table: pd.DataFrame, sets: list[dict]) -> dict:
    """The store's facts: every parameter set with its count (never the first result's for all), devices..."""
    devices, versions = [], {}
    for result in results:
        engine = result.provenance.get("engine") if isinstance(result.provenance.get("engine"), dict) else {}
        if engine.get("device") and engine["device"] not in devices:
            devices.append(engine["device"])
        versions = versions or result.provenance.get("versions") or {}
    sizes = sorted({_plain(v) for v in table["pixel_size_m"] if _plain(v) is not None})
    shown = [{"parameters": describe_parameters(s["parameters"]), "engine": s["engine"] or "unknown",
              "precision": s["precision"] or "", "model": s["model"] or "unknown", "images": s["images"],
              "builtin": bool(s["builtin"])} for s in sets]
    return {"parameter_sets": shown, "device": ", ".join(map(str, devices)) or None, "versions": versions,
            "pixel_sizes_nm": [f"{v * 1e9:g}" for v in sizes[:6]], "more_pixel_sizes": max(0, len(sizes) - 6),
            "label_rules": sorted({str(v) for v in table["label_rule"].dropna()})}


def build_report(store: str | Path, out: str | Path, labels_csv: str | Path | None = None,
                 expert_csv: str | Path | None = None, csv: str | Path | None = None, title: str | None = None,
                 workers: int | None = None, path_column: str | None = None,
                 label_column: str | None = None) -> ReportOutcome:
    """Write the report of the results in ``store`` to ``out/index.html``; see the module docstring.

    ``labels_csv`` (``path,label``, or a dataset folder; other column names with
    ``path_column``/``label_column``) adds the confusion
    matrix and the accuracy per label; ``expert_csv`` an expert's answers
    beside the model's. ``csv`` is the current table of the runs when it is
    not the one beside the store. Raises SemtileError naming the file or
    folder at fault; ``out`` is left as it was when anything fails.
    """
    t0 = time.perf_counter()
    store, out = Path(store), Path(out)
    results = open_results(store, csv=csv)
    _check_out(out, store)
    if expert_csv is not None and labels_csv is None:
        raise SemtileError("--expert needs --labels: an expert is scored against the true labels")
    table = results.table.copy()
    summary = results.summary()
    failures = results.failures
    labels = _label_list(results, table)
    sets = results.parameter_sets()
    builtin = [p for p in PARTS if any(p in s["builtin"] for s in sets)]
    section, model, expert = None, None, None
    if labels_csv is not None:
        truth = results.answers(labels_csv, path_column=path_column, label_column=label_column)
        table["true_label"] = truth
        if not truth.attrs["matched"]:
            raise SemtileError(f"{truth.attrs['file']}: no image of it has a result in {store}")
        true_values = list(dict.fromkeys(truth.dropna()))
        section = {"file": truth.attrs["file"], "matched": truth.attrs["matched"], "by_name": truth.attrs["by_name"],
                   "unmatched_answers": truth.attrs["unmatched_answers"],
                   "without_truth": int(truth.isna().sum()), "who": [], "unknown": None}
        if not set(true_values) & set(results.labels):  # e.g. cell classes against the built-in 0-15
            section["unknown"] = _unknown_labels(table, results.labels, true_values)
            labels = true_values
        else:
            labels += [v for v in true_values if v not in labels]
            model = _score_labels(table, labels, "true_label")
            section["who"].append({"name": "model", **model.to_dict()})
        if expert_csv is not None:
            answers = results.answers(expert_csv)
            if not answers.attrs["matched"]:
                raise SemtileError(f"{answers.attrs['file']}: no image of it has a result in {store}")
            table["expert_label"] = answers
            labels += [v for v in dict.fromkeys(answers.dropna()) if v not in labels]
            both = table[table["true_label"].notna() & table["expert_label"].notna()]
            if both.empty:
                raise SemtileError(f"{answers.attrs['file']}: no image it answers has a true label in {labels_csv}")
            expert = label_scores(list(both["true_label"]), list(both["expert_label"]), labels)
            section["who"].append({"name": "expert", **expert.to_dict()})
            if model is not None:
                same = label_scores(list(both["true_label"]), list(both["label"]), labels)
                section["who"].append({"name": "model on the expert's images", **same.to_dict()})
            section["expert_file"] = answers.attrs["file"]
    t_read = time.perf_counter()

    staged = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staged.mkdir(parents=True)
    try:
        from semtile.report.figures import accuracy_per_label, confusion, ratio_against_label, ratio_distribution
        from semtile.report.pictures import THUMB, render_pictures

        pictures = render_pictures(results, staged, workers=workers)
        t_pictures = time.perf_counter()
        # g(t) is the first result's segmenter's: drawn only when every result has that segmenter
        curve = results.hypothesis_curve() if len({x["segmenter_sha256"] for x in sets}) <= 1 else None
        x_column = "true_label" if "true_label" in table else "label"
        with_x = table[table[x_column].notna() & (table["status"] != "damaged")]
        unknown = section is not None and section["unknown"] is not None
        if unknown:
            curve = None  # g(t) is on the model's scale, which none of the true labels is on
        figures = {"ratio_distribution": ratio_distribution(table.loc[table["status"] != "damaged", "adhesive_ratio"].to_numpy()),
                   "ratio_against_label": ratio_against_label(
                       labels, list(with_x[x_column]), with_x["adhesive_ratio"].to_numpy(), curve,
                       "true label" if unknown else "true label t" if x_column == "true_label"
                       else "predicted label t")}
        if model is not None:
            figures["confusion_model"] = confusion(model, "model")
        if expert is not None:
            figures["confusion_expert"] = confusion(expert, "expert")
        if model is not None or expert is not None:
            figures["accuracy_per_label"] = accuracy_per_label(model or expert, expert if model else None)
        made = {name: describe_parameters(s["parameters"]) for s in sets for name in s["names"]}
        rows = _rows(table, pictures, made)
        maps = _map_gallery(table, pictures)
        facts = _facts(results, summary, table, sets)
        page = _render({
            "title": title or f"semtile report: {store.name}",
            "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "version": __version__, "store": str(store.resolve()), "summary": summary, "facts": facts,
            "failures": failures.head(MAX_FAILURES_SHOWN).to_dict("records"), "failure_count": len(failures),
            "figures": figures, "curve": curve, "labels_section": section, "maps": maps,
            "builtin_caveat": builtin_caveat(builtin), "ratio_x": "true" if x_column == "true_label" else "predicted",
            "picture_errors": sum(1 for p in pictures.values() if p.error), "thumb": THUMB,
            "data": {"rows": rows, "columns": _columns(table, summary, len(sets) > 1), "labels": "true_label" in table,
                     "expert": "expert_label" in table}})
        (staged / "index.html").write_text(page, encoding="utf-8")
        marker = {"format": REPORT_FORMAT, "store": str(store.resolve()), "images": len(table),
                  "failures": len(failures), "summary": summary, "labels": section, "builtin_model": builtin,
                  "parameter_sets": facts["parameter_sets"],
                  "semtile": __version__, "generated": datetime.now(UTC).isoformat(timespec="seconds")}
        (staged / MARKER).write_text(json.dumps(marker, indent=2, default=_plain) + "\n", encoding="utf-8")
        _publish(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    errors = sum(1 for p in pictures.values() if p.error)
    log.info("report_written", index=str(out / "index.html"), images=len(table), failures=len(failures),
             picture_errors=errors, seconds=round(seconds, 2), read_s=round(t_read - t0, 2),
             pictures_s=round(t_pictures - t_read, 2))
    return ReportOutcome(index=out / "index.html", images=len(table), failures=len(failures), seconds=seconds,
                         picture_errors=errors)


def _unknown_labels(table: pd.DataFrame, model_labels: list, true_values: list) -> dict:
    """None of the true labels is a label of the model: no scores, but how the model's answers fall per true label."""
    judged = table[table["true_label"].notna()]
    answered = list(dict.fromkeys(v for v in model_labels if v in set(judged["label"])))
    answered += [v for v in dict.fromkeys(judged["label"]) if v not in answered]
    counts = [{"truth": t, "images": int((judged["true_label"] == t).sum()),
               "counts": [int(((judged["true_label"] == t) & (judged["label"] == a)).sum()) for a in answered]}
              for t in true_values]
    return {"model_labels": _span(model_labels), "true_labels": [str(v) for v in true_values],
            "answered": [str(v) for v in answered], "rows": counts}


def _span(values: list) -> str:
    """``0-15`` for consecutive integers, else the values listed."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if ints and len(values) > 2 and list(values) == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


def _columns(table: pd.DataFrame, summary: dict, several_sets: bool = False) -> list[dict]:
    """The table's columns for the page script: key, title, kind (num/text), and whether it shows at all."""
    columns = [{"key": "name", "title": "name", "kind": "text"},
               {"key": "label", "title": "label", "kind": "num"}]
    if "true_label" in table:
        columns.append({"key": "truth", "title": "true label", "kind": "num"})
    if "expert_label" in table:
        columns.append({"key": "expert", "title": "expert", "kind": "num"})
    columns += [{"key": "ratio", "title": "adhesive ratio", "kind": "num"},
                {"key": "px", "title": "pixel size (nm)", "kind": "num"},
                {"key": "size", "title": "size (px)", "kind": "num"}]
    if table["seconds"].notna().any():
        columns.append({"key": "sec", "title": "work s", "kind": "num"})  # per image, its stages summed
    if several_sets:
        columns.append({"key": "params", "title": "parameters", "kind": "text"})
    if summary["maps"]:
        columns.append({"key": "maps", "title": "maps", "kind": "text"})
    return columns


def _rows(table: pd.DataFrame, pictures: dict, made: dict) -> list[dict]:
    rows = []
    has_truth, has_expert = "true_label" in table, "expert_label" in table
    for record in table.to_dict("records"):
        name = record["name"]
        pic = pictures.get(name)
        h, w = _plain(record["height"]), _plain(record["width"])
        row = {"name": name, "file": record["file"], "source": record["source"], "label": _plain(record["label"]),
               "ratio": _plain(record["adhesive_ratio"]),
               "px": None if _plain(record["pixel_size_m"]) is None else round(record["pixel_size_m"] * 1e9, 4),
               "size": h * w if h and w else None, "hw": f"{h}×{w}" if h and w else "",
               "sec": None if _plain(record["seconds"]) is None else round(record["seconds"], 3),
               "maps": record["maps"], "run": record["run_id"] or "", "params": made.get(name, "")}
        if has_truth:
            row["truth"] = _plain(record["true_label"])
        if has_expert:
            row["expert"] = _plain(record["expert_label"])
        if pic is not None and not pic.error:
            row.update({"thumb": pic.thumb, "view": pic.view, "mask": pic.mask, "vw": pic.size[0], "vh": pic.size[1],
                        "layers": pic.maps})
        elif pic is not None:
            row["error"] = pic.error
        if record.get("status") == "damaged" and "error" not in row:
            row["error"] = "damaged result (semtile verify lists what; --repair sets it aside for a rerun)"
        rows.append(row)
    return rows


def _map_gallery(table: pd.DataFrame, pictures: dict) -> list[dict]:
    """Per map name: how many images hold it, and the first few with it laid over the scan."""
    gallery: dict[str, dict] = {}
    for name in table["name"]:
        pic = pictures.get(name)
        for map_name, thumb in (pic.map_thumbs.items() if pic else ()):
            entry = gallery.setdefault(map_name, {"name": map_name, "images": 0, "shown": []})
            entry["images"] += 1
            if len(entry["shown"]) < MAP_GALLERY:
                entry["shown"].append({"name": name, "thumb": thumb})
    return [gallery[k] for k in sorted(gallery)]


def _render(context: dict) -> str:
    """The page: the template with its style and script inlined (package data, read as text, never escaped)."""
    import jinja2
    from markupsafe import Markup

    templates = resources.files("semtile.report") / "templates"
    env = jinja2.Environment(loader=jinja2.PackageLoader("semtile.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["sha"] = lambda v: v or "unknown"
    env.filters["num"] = lambda v, fmt="{:.3f}": "–" if v is None else fmt.format(v)
    assets = {kind: Markup((templates / f"report.{kind}").read_text(encoding="utf-8")) for kind in ("css", "js")}
    return env.get_template("report.html.j2").render(**context, **assets)

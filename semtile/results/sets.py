"""The distinct sets of parameters, engine and model a store's results were made with.

A store may hold results of several runs, made at different thresholds, on
different engines or with different models: each result carries its own in
its provenance, and a summary of the store must show every set, not the first.
"""

from __future__ import annotations

import json

from semtile.models.naming import builtin_parts

__all__ = ["SHOWN_PARAMETERS", "parameter_set", "parameter_sets", "describe_parameters"]

#: The parameters that change a result, in the order they are shown.
SHOWN_PARAMETERS = ("threshold", "tile", "halo", "databar_rows", "page")


def parameter_set(result) -> dict:
    """The parameters, engine and model of one result (a :class:`~semtile.results.ResultImage`)."""
    prov = result.provenance
    params = result.parameters
    engine = prov.get("engine") if isinstance(prov.get("engine"), dict) else {}
    model = prov.get("model") if isinstance(prov.get("model"), dict) else {}
    return {"parameters": {k: params[k] for k in SHOWN_PARAMETERS if params.get(k) is not None},
            "engine": engine.get("name"), "precision": engine.get("precision"), "model": model.get("source"),
            "classifier_sha256": (model.get("classifier") or {}).get("sha256"),
            "segmenter_sha256": (model.get("segmenter") or {}).get("sha256"),
            "builtin": builtin_parts(model)}


def describe_parameters(parameters: dict) -> str:
    """``threshold 0.3, tile 256, halo 32``: a parameter set in words."""
    return ", ".join(f"{k} {v}" for k, v in parameters.items()) or "not recorded"


def parameter_sets(results) -> list[dict]:
    """Each distinct :func:`parameter_set` of ``results``, with ``images`` (its count) and ``names``, most used first."""
    sets: dict[str, dict] = {}
    for name in results.names:
        made = parameter_set(results[name])
        entry = sets.setdefault(json.dumps(made, sort_keys=True, default=str), {**made, "images": 0, "names": []})
        entry["images"] += 1
        entry["names"].append(name)
    return sorted(sets.values(), key=lambda s: -s["images"])

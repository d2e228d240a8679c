"""``semtile explain``: Grad-CAM and CAM heat maps of stored results, written into the result beside the mask.

For each result of a store (read through :func:`semtile.open_results`), the
tiles are cut again from the normalised image the store keeps (level 0 of the
result's image), with the tile, halo and region settings recorded in the
result's provenance, and run through the classifier that produced the result
(found by the path and sha256 in its provenance; ``model`` overrides). The
maps are blended like the mask, in memory or, for scans above the recorded
``region_pixels``, out of core (the same pass runner and mergers as
``semtile process``: :func:`semtile.inference.one_image.run_pass`), so memory stays
bounded whatever the scan's size. They are added to the result with
:meth:`ResultStore.add_maps` (atomic: readers see the result with all the new
maps or none).

Why a separate command and not ``semtile process --explain``: gradients need
PyTorch, while the nightly run uses the fastest engine there is (OpenVINO,
TensorRT), which has none; and explanations are wanted for some runs, not
every night. Recomputing the classifier's forward pass on torch is the price
(measured in the README).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from semtile.engines import torch_device
from semtile.errors import ModelError, SemtileError
from semtile.explain.heatmaps import KINDS, HeatMapPass, parse_kinds
from semtile.explain.recorded import recorded_model
from semtile.inference.one_image import run_pass
from semtile.inference.options import ProcessOptions
from semtile.inference.split import GridRule
from semtile.inference.strategy import REGIONS, merge_strategy
from semtile.logs import get_logger

__all__ = ["ExplainOutcome", "explain_store", "chosen_names"]

log = get_logger("semtile.explain")



@dataclass
class ExplainOutcome:
    """What ``semtile explain`` did with one result."""

    name: str
    status: str  # "ok", "skipped" or "error"
    kinds: tuple[str, ...] = ()
    class_label: object = None
    seconds: float = 0.0
    megapixels: float = 0.0
    tiles: int = 0
    out_of_core: bool = False
    process_infer_seconds: float | None = None  # the engine time the result's own run recorded
    error: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def chosen_names(results, names: Sequence[str] | None, store: Path, what: str) -> list[str]:
    """``names`` (default: every result of the store), each checked to be there."""
    chosen = list(results.names) if names is None else list(names)
    missing = [n for n in chosen if n not in results]
    if missing:
        raise SemtileError(f"{store}: no result named {', '.join(missing)}")
    if not chosen:
        raise SemtileError(f"{store}: no results to {what}")
    return chosen


def _classifier_for(result, model: Path | None, cache: dict):
    """The classifier that produced ``result`` (path and sha256 from its provenance), or ``model``."""
    from semtile.models.io import load_model

    recorded = ((result.provenance.get("model") or {}).get("classifier") or {})
    if model is not None:
        path = Path(model)
        path = path / "classifier.pt" if path.is_dir() else path
    else:
        path = recorded_model(result, "classifier")
    key = str(path)
    if key not in cache:
        cache[key] = load_model(path, "classifier")
    loaded = cache[key]
    if recorded.get("sha256") and loaded.sha256 != recorded["sha256"]:
        if model is None:
            raise ModelError(f"{path}: not the classifier that produced {result.name} (sha256 {loaded.sha256[:12]}..., "
                             f"the result's {recorded['sha256'][:12]}...); give the right one with --model")
        log.warning("explain_other_model", result=result.name, model=str(path), sha256=loaded.sha256,
                    result_sha256=recorded["sha256"])
    if list(loaded.labels) != list(result.labels):
        raise ModelError(f"{path}: its labels {loaded.labels} are not the result's {result.labels}")
    return loaded


def _options_of(result) -> ProcessOptions:
    """The tiling of the run that produced ``result`` (defaults where the provenance lacks a value)."""
    params = result.provenance.get("parameters") or {}
    known = {k: params[k] for k in ("tile", "halo", "batch_size", "region_pixels", "block_pixels")
             if isinstance(params.get(k), int)}
    return ProcessOptions(**known)


def _class_of(result, class_label) -> tuple[object, int]:
    labels = list(result.labels)
    if class_label is None:
        label = result.label
    else:
        matches = [v for v in labels if v == class_label or str(v) == str(class_label)]
        if not matches:
            raise SemtileError(f"--class {class_label}: not one of the model's labels {labels}")
        label = matches[0]
    if label not in labels:
        raise SemtileError(f"{result.group_path}: predicted label {label!r} is not among its labels {labels}")
    return label, labels.index(label)


def explain_store(store: str | Path, kinds: str | Sequence[str] = KINDS, *, class_label=None,
                  names: Sequence[str] | None = None, model: str | Path | None = None, engine: str = "auto",
                  batch_size: int | None = None, threads: int | None = None, region_pixels: int | None = None,
                  scratch: str | Path | None = None, force: bool = False,
                  progress: Callable[[ExplainOutcome], None] | None = None) -> list[ExplainOutcome]:
    """Add heat maps (``kinds``: gradcam, cam) to the results of ``store``; one outcome per result.

    ``class_label``: explain this label for every image (default: each image's
    predicted label). ``names``: only these results. ``region_pixels``
    overrides the recorded threshold above which a scan is blended out of core.
    A result already holding the maps for the same classifier and class is
    skipped unless ``force``. One result's failure is reported and the others go on.
    """
    import torch

    from semtile.results import open_results
    from semtile.store import open_store

    kinds = parse_kinds(kinds)
    store = Path(store)
    results = open_results(store)
    chosen = chosen_names(results, names, store, "explain")
    device, why = torch_device(engine)  # the registry's word on which torch device gives gradients
    log.info("explain_engine", engine=f"torch-{device}", asked=engine, reason=why)
    if threads:
        torch.set_num_threads(int(threads))
    writer = open_store(store, mode="a")
    cache: dict = {}
    outcomes = []
    base = Path(scratch) if scratch is not None else store.parent
    for name in chosen:
        result = results[name]
        outcome = ExplainOutcome(name, "ok", kinds)
        t0 = time.perf_counter()
        work = None
        try:
            loaded = _classifier_for(result, Path(model) if model else None, cache)
            label, index = _class_of(result, class_label)
            outcome.class_label = label
            setting = {"class": "predicted" if class_label is None else label, "classifier_sha256": loaded.sha256}
            done = result.stored.maps if hasattr(result.stored, "maps") else {}
            if not force and all(k in done and all(done[k].get(key) == v for key, v in setting.items())
                                 for k in kinds):
                outcome.status = "skipped"
                outcomes.append(outcome)
                if progress:
                    progress(outcome)
                continue
            options = _options_of(result)
            image = result.stored.image  # the normalised valid area, float32 in [0, 1], sliced lazily
            h, w = (int(v) for v in image.shape[-2:])
            rule = GridRule.derive(options.tile, options.halo, multiple=loaded.arch.multiple)
            size = batch_size or options.batch_size
            heat = HeatMapPass(rule, index, kinds, loaded.sha256, device, size, network=loaded.network)
            limit = options.region_pixels if region_pixels is None else region_pixels
            outcome.tiles, outcome.megapixels = len(rule.grid((h, w))), h * w / 1e6
            outcome.out_of_core = merge_strategy(h * w, region_pixels=limit) == REGIONS
            if outcome.out_of_core:
                work = Path(tempfile.mkdtemp(prefix=f".semtile-explain-{uuid.uuid4().hex[:8]}-", dir=base))
            source = image if outcome.out_of_core else np.asarray(image[...], dtype=np.float32)
            maps, _ = run_pass(source, heat, region_pixels=limit, block_pixels=options.block_pixels, scratch=work)
            seconds = time.perf_counter() - t0
            attrs = {**setting, "label": label, "class_index": index, "kinds": list(kinds),
                     "method": {"gradcam": "ReLU(sum_c mean(d logit/d A_c) A_c), A = last stage before its max-pool",
                                "cam": "sum_c w_kc F_c, F = last stage after its max-pool (what the average pool reads)"},
                     "values": "raw, blended like the mask; normalise the whole map by its max to threshold it",
                     "classifier_path": str(loaded.path), "engine": f"torch-{device}", "tile": options.tile,
                     "halo": options.halo, "out_of_core": outcome.out_of_core, "seconds": round(seconds, 3)}
            writer.add_maps(name, {kind: maps[kind] for kind in kinds}, attrs)
            outcome.seconds = time.perf_counter() - t0
            timings = result.attrs.get("timings")
            if isinstance(timings, dict) and isinstance(timings.get("infer"), (int, float)):
                outcome.process_infer_seconds = float(timings["infer"])
            log.info("explained", result=name, kinds=list(kinds), label=label, seconds=round(outcome.seconds, 3),
                     tiles=outcome.tiles, out_of_core=outcome.out_of_core)
        except SemtileError as exc:
            outcome.status, outcome.error = "error", str(exc)
            log.error("explain_failed", result=name, error=str(exc))
        except Exception as exc:
            outcome.status, outcome.error = "error", f"{type(exc).__name__}: {exc}"
            log.error("explain_failed", result=name, error=outcome.error, exc_info=exc)
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
        outcome.seconds = outcome.seconds or time.perf_counter() - t0
        outcomes.append(outcome)
        if progress:
            progress(outcome)
    return outcomes

"""``semtile process SCANS --model PACKAGE``: a bioimage.io 2-D model as a pass, run by every executor unchanged.

The pass tiles a scan by the package's own rule (sizes ``min + n * step``,
or its fixed size) with the package's halo as semtile's halo: overlapping
tiles are blended with semtile's ramps, not cropped. Its tiles are read
through the package's preprocessing with statistics over the whole scan
(:meth:`BioimageioPass.tile_source`, :mod:`.preprocess`), its weights
compiled by one of semtile's engines (:mod:`.runners`; built once per process
and weights sha256). Pointwise postprocessing runs tile by tile.

The semantic-segmentation output (the first with axes y and x) is the
result's mask (a multi-channel one: one minus its first, background, channel;
each channel is stored too); its ``binarize`` threshold, where the package
has one, is the rule of the binary mask, else ``--threshold``. Other spatial
outputs are stored as named maps (``ID``, or ``ID_CHANNEL`` per channel). Per-tile outputs (no y, x) are gathered per
tile; a package semtile wrote gives its class logits and labels, so the label
and class probabilities are decided as for the native model. Provenance names
the package (id, version, sha256, weights sha256).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np

from semtile.errors import SemtileError
from semtile.inference.options import MIN_SIDE, ProcessOptions
from semtile.inference.passes import Pass, PassResult, PassRunner, RegionJudgement, TileOutputs, register_pass
from semtile.inference.split import GridRule, TileGrid
from semtile.models.bioimageio.package import PackageModel, TensorSpec, read_package
from semtile.models.bioimageio.preprocess import PreprocessedScan, apply_ops, raw_scale, scan_statistics

__all__ = ["BioimageioPass", "bioimageio_pass", "package_rule", "RESERVED_MAPS"]

RESERVED_MAPS = ("mask", "binary_mask", "image", "anomaly")
_STATS: OrderedDict = OrderedDict()  # per process: (scan array, ops) -> whole-scan statistics
_STATS_LOCK = threading.Lock()


def _sizes(spec: TensorSpec) -> tuple[int, int, bool]:
    """(min, step, fixed) of the input's y and x sizes (both must follow one rule: tiles are square)."""
    rules = {spec.axis(a).size for a in ("y", "x")}
    if len(rules) != 1:
        raise SemtileError(f"input {spec.id!r}: y and x follow different size rules {sorted(map(str, rules))}; "
                           "semtile's tiles are square")
    size = rules.pop()
    if isinstance(size, int):
        return size, 0, True
    if isinstance(size, tuple) and size[0] == "param":
        return int(size[1]), int(size[2]), False
    raise SemtileError(f"input {spec.id!r}: y/x size {size!r} is not a fixed size or min + n * step")


def package_rule(package: PackageModel, tile: int | None, halo: int | None) -> GridRule:
    """The tile and halo to run ``package`` at: ``tile`` if the package takes it (else the package's own, a
    semtile package's recorded tile, or the nearest size it takes), its halo unless ``halo`` is given."""
    where = f"--model {package.source}"
    low, step, fixed = _sizes(package.input)
    mask_halo = _semantic(package).halo
    halo = int(mask_halo if halo is None else halo)

    def ok(t: int) -> bool:
        return t >= low and (t == low if fixed else (t - low) % step == 0) and 4 * halo <= t

    if fixed:
        if not ok(low):
            raise SemtileError(f"{where}: its fixed tile {low} cannot hold halo {halo} on each side (4 * halo > tile)")
        chosen = low
    else:
        wanted = [int(package.semtile["tile"])] if package.semtile.get("tile") else []
        wanted += [int(tile)] if tile else []
        wanted += [256]
        chosen = next((t for t in wanted if ok(t)), None)
        if chosen is None:
            base = max(wanted[0], 4 * halo, low)
            chosen = low + -(-(base - low) // step) * step
    if tile and chosen != tile and not package.semtile.get("tile"):
        from semtile.logs import get_logger

        get_logger("semtile.process").info("bioimageio_tile", package=package.source, asked=tile, tile=chosen,
                                           note=f"the package takes tiles of {low} + n * {step}" if step
                                           else f"the package takes tiles of {low} only")
    return GridRule.derive(chosen, halo, what=where)


def _semantic(package: PackageModel) -> TensorSpec:
    return next(o for o in package.outputs if o.spatial)


def _map_name(output_id: str) -> str:
    return f"bioimageio_{output_id}" if output_id in RESERVED_MAPS else output_id


def _channel_maps(output: TensorSpec) -> list[str]:
    """The stored maps of a multi-channel spatial output: ``ID_CHANNEL`` for each channel."""
    axis = next(a for a in output.axes if a.type == "channel")
    names = axis.channel_names or tuple(str(c) for c in range(output.channels))
    return [f"{output.id}_{name}" for name in names]


class _Runner(PassRunner):
    def __init__(self, p: BioimageioPass, graph):
        self.p, self.graph = p, graph

    def run(self, tiles: np.ndarray) -> TileOutputs:
        from semtile.inference.bioimageio.runners import from_output, to_input

        spec = self.p.package.input
        has_batch = any(a.type == "batch" for a in spec.axes)
        batches = [tiles] if has_batch else [tiles[i: i + 1] for i in range(len(tiles))]
        results = [self.graph.run(to_input(b, spec.axes)) for b in batches]
        outputs = [np.concatenate([from_output(r[k], o.axes, len(b)) for r, b in zip(results, batches)])
                   for k, o in enumerate(self.p.package.outputs)]
        maps, vectors = {}, {}
        for value, o in zip(outputs, self.p.package.outputs):
            value = apply_ops(value, [op for op in o.ops if op[0] != "binarize"], {})
            if o.id == self.p.mask_output:
                maps["mask"] = value if value.ndim == 3 else 1.0 - value[:, 0]
            if o.spatial and value.ndim == 4:  # one map per channel: every store and executor takes 2-D maps
                maps.update({name: value[:, c] for c, name in enumerate(_channel_maps(o))})
            elif o.spatial and o.id != self.p.mask_output:
                maps[_map_name(o.id)] = value
            elif not o.spatial:
                vectors[o.id] = value
        return TileOutputs(maps=maps, vectors=vectors)

    def describe(self) -> dict:
        return dict(self.graph.facts)


@register_pass
@dataclass(frozen=True, eq=False)
class BioimageioPass(Pass):
    """A bioimage.io model over every tile; see the module docstring. Picklable (the package is plain data)."""

    kind = "bioimageio"

    package: PackageModel
    engine: str
    engine_reason: str
    rule: GridRule
    options: ProcessOptions
    threshold: float
    threshold_source: str  # "binarize" (the package's) or "option"
    mask_output: str
    threads: int | None = None
    device: int = 0
    widths: dict = field(default_factory=dict)  # per-tile outputs: id -> width

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return self.options.batch_size

    @property
    def gpu(self) -> bool:  # type: ignore[override]
        return self.engine == "torch-cuda"

    @property
    def provenance(self) -> dict:
        return self.package.provenance()

    @property
    def labels(self) -> tuple:
        return tuple(self.package.semtile.get("labels") or ())

    def token(self) -> tuple:
        return (self.engine, self.rule.tile, self.threads, self.package.sha256,
                tuple(sorted((k, v["sha256"]) for k, v in self.package.weights.items())))

    def build_runner(self) -> PassRunner:
        import os

        from semtile.inference.bioimageio.runners import build_graph

        shape = []
        for a in self.package.input.axes:
            shape.append(-1 if a.type == "batch" else self.rule.tile if a.id in ("y", "x")
                         else int(a.size) if a.type == "channel" else 1)
        threads = self.threads
        share = os.environ.get("SEMTILE_WORKERS_ON_HOST")
        if threads is None and share:  # a Dask worker: its share of the host's cores
            threads = max(1, len(os.sched_getaffinity(0)) // max(1, int(share)))
        graph = build_graph(self.engine, self.package.weights, tuple(shape), threads,
                            int(os.environ.get("SEMTILE_CUDA_DEVICE", self.device)), max_batch=self.batch_size)
        return _Runner(self, graph)

    def tile_source(self, image, info):
        """The scan through the package's preprocessing, with statistics over the whole scan (once per scan)."""
        ops = self.package.input.ops
        # semtile's own packages take gray 0..255 whatever the scan's depth (their networks see gray in [0, 1]).
        ours = self.package.semtile.get("format") == "semtile-bioimageio/1"
        scale = 255.0 if ours else raw_scale(getattr(info, "dtype", None))
        where = getattr(image, "store_path", None)  # a stored array (region by region: one per block task)
        key = None if where is None else (str(where), repr(ops), scale)  # in-memory arrays: no identity to trust
        with _STATS_LOCK:
            stats = _STATS.get(key) if key else None
        if stats is None:
            stats = scan_statistics(image, ops, scale)
            if key:
                with _STATS_LOCK:
                    _STATS[key] = stats
                    while len(_STATS) > 16:
                        _STATS.popitem(last=False)
        return PreprocessedScan(image, ops, scale, stats)

    def vector_widths(self) -> dict[str, int]:
        return dict(self.widths)

    def map_names(self) -> tuple[str, ...]:
        names = []
        for o in self.package.outputs:
            if o.spatial and o.channels > 1:
                names += _channel_maps(o)
            elif o.spatial and o.id != self.mask_output:
                names.append(_map_name(o.id))
        return tuple(names)

    def judge_region(self, maps: dict) -> RegionJudgement:
        mask = np.asarray(maps["mask"])
        binary = mask > self.threshold if self.threshold_source == "binarize" else mask >= self.threshold
        arrays = {"mask": mask, "binary_mask": binary}
        arrays.update({name: maps[name] for name in self.map_names()})
        return RegionJudgement(arrays=arrays,
                               counts={"adhesive": int(np.count_nonzero(binary)), "pixels": int(binary.size),
                                       "mask_sum": float(mask.sum(dtype=np.float64))})

    def parameters(self) -> dict:
        return {**asdict(self.options), "tile": self.rule.tile, "halo": self.rule.halo, "threshold": self.threshold,
                "threshold_source": self.threshold_source, "min_side": MIN_SIDE}

    def finish(self, counts: dict, vectors: dict, grid: TileGrid, runner_facts: dict) -> PassResult:
        from semtile.inference.labels import class_probs, core_weights, decide_label

        pixels = counts["pixels"]
        labels, label, probs, rule = [], None, np.zeros(0, np.float32), None
        logits = vectors.get("class_logits")
        if self.labels and logits is not None and logits.shape[1] == len(self.labels):
            labels = list(self.labels)
            probs = class_probs(logits, core_weights(grid))
            label, rule = decide_label(probs, labels)
        weights = core_weights(grid)
        per_tile = {name: [float(v) for v in (values * weights[:, None]).sum(0) / weights.sum()]
                    for name, values in vectors.items() if name != "class_logits" or not labels}
        facts = {**self.package.provenance()["bioimageio"], "mask_output": self.mask_output,
                 "threshold": self.threshold, "threshold_source": self.threshold_source,
                 "preprocessing": [list(op) for op in self.package.input.ops], "statistics": "whole scan"}
        attrs = {"adhesive_ratio_soft": float(counts["mask_sum"] / pixels), "bioimageio": facts}
        if rule:
            attrs["label_rule"] = rule
        if per_tile:
            attrs["bioimageio"]["per_tile_means"] = per_tile
        map_facts = {"kind": "bioimageio", "package": self.package.provenance()["bioimageio"],
                     "engine": runner_facts, "tile": self.rule.tile, "halo": self.rule.halo}
        return PassResult(
            fields={"labels": labels, "label": label, "class_probs": probs,
                    "adhesive_ratio": counts["adhesive"] / pixels},
            attrs=attrs,
            provenance={"model": self.package.provenance(), "engine": runner_facts, "parameters": self.parameters()},
            map_attrs={name: dict(map_facts, output=name) for name in self.map_names()})

    def key(self) -> dict:
        return {"model_sha256": {"bioimageio": self.package.sha256,
                                 **{k: v["sha256"] for k, v in self.package.weights.items()}},
                "engine": {"name": self.engine, "precision": "f32"},
                "parameters": {"tile": self.rule.tile, "halo": self.rule.halo, "threshold": self.threshold,
                               "page": self.options.page, "databar_rows": self.options.databar_rows}}

    def run_facts(self) -> dict:
        return {"model": self.package.source, "bioimageio_name": self.package.name, "engine": self.engine,
                "precision": "f32", "engine_reason": self.engine_reason}


def bioimageio_pass(path, engine: str = "auto", options: ProcessOptions = ProcessOptions(), *,
                    tile: int | None = None, halo: int | None = None, threshold: float | None = None,
                    threads: int | None = None, device: int = 0) -> BioimageioPass:
    """The pass of the package at ``path``: read and validated, its engine picked and its tile rule settled before
    anything runs. ``threshold``: the binary mask's (default: the package's ``binarize``, else ``options``')."""
    from semtile.inference.bioimageio.runners import pick_graph_engine

    package = read_package(path)
    rule = package_rule(package, tile, halo)
    semantic = _semantic(package)
    binarize = next((kw for name, kw in semantic.ops if name == "binarize"), None)
    if threshold is not None:
        value, source = float(threshold), "option"
    elif binarize is not None and "threshold" in binarize:
        value, source = float(binarize["threshold"]), "binarize"
    else:
        value, source = float(options.threshold), "option"
    name, why = pick_graph_engine(engine, package.weights)
    widths = {o.id: o.channels for o in package.outputs if not o.spatial}
    from dataclasses import replace

    options = replace(options, tile=rule.tile, halo=rule.halo)
    return BioimageioPass(package=package, engine=name, engine_reason=why, rule=rule, options=options,
                          threshold=value, threshold_source=source, mask_output=semantic.id, threads=threads,
                          device=device, widths=widths)

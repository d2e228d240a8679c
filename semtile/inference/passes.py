"""A tiled pass: the unit of work every runner (in process, region by region, on Dask) executes.

A :class:`Pass` is small and picklable. It holds:

* its **grid rule** (:class:`~semtile.inference.split.GridRule`): tile and halo,
  derived and checked once;
* its **runner** (:class:`PassRunner`), built once per process from the pass:
  a batch of tiles ``(n, T, T)`` in, :class:`TileOutputs` out: named maps,
  blended by a merger, and per-tile vectors, gathered in tile order;
* its **judge**: :meth:`Pass.judge_region` turns the blended maps of one
  region (the whole image when it is blended in memory) into the arrays the
  store writes and additive counts; :meth:`Pass.finish` turns the summed
  counts and the vectors into the result's fields, attributes, provenance and
  run-table columns (:class:`PassResult`);
* its part of the **completion key** (:meth:`Pass.key`): what besides the
  input decides its output, so a rerun redoes an image whose pass changed.

The segmenter + classifier pass (:mod:`semtile.inference.segment`) gives the
result's mask, labels and ratio; other passes (anomaly maps, heat maps,
embeddings, any new kind of map) add named maps and attributes. A new kind of
map is one module defining a pass and one :func:`register_pass`; the runners
never name a pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from semtile.inference.split import GridRule, TileGrid

__all__ = ["Pass", "PassRunner", "TileOutputs", "RegionJudgement", "PassResult", "PASSES", "register_pass",
           "merge_nested", "pass_runner"]

#: Every kind of pass, by name (the CLI and tests look them up here).
PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass kind known by its ``kind`` name."""
    PASSES[cls.kind] = cls
    return cls


@dataclass
class TileOutputs:
    """What a runner gives for ``n`` tiles: maps ``(n, T, T)`` or ``(n, C, T, T)`` (numpy, or device tensors
    where the runner keeps maps on its device) and per-tile vectors ``(n, K)``."""

    maps: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


class PassRunner(ABC):
    """A pass's batch function in one process. Not thread-safe: one per thread.

    ``submit``/``collect`` let a runner keep up to ``in_flight`` batches going
    (a GPU engine copies one batch in while it computes another); the default
    runs the batch in ``submit``. ``device`` and ``stream`` name where the maps
    stay, when they stay on a torch device: the merger then blends them there.
    """

    in_flight: int = 1
    device: Any = None
    stream: Any = None

    @abstractmethod
    def run(self, tiles: np.ndarray) -> TileOutputs:
        """The outputs of a batch of tiles, synchronously."""

    def submit(self, tiles: np.ndarray) -> Any:
        return self.run(tiles)

    def collect(self, handle: Any) -> TileOutputs:
        return handle

    def describe(self) -> dict:
        """Name, precision, device and versions of what runs, for provenance."""
        return {}


@dataclass
class RegionJudgement:
    """One region's judged arrays (what the store writes) and counts (added over the regions of a scan)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


@dataclass
class PassResult:
    """A pass's contribution to one image's result.

    ``fields``: the result's own fields (label, labels, class_probs,
    adhesive_ratio), given by the pass that makes the mask. ``attrs`` join the
    result's attributes, ``provenance`` is merged into its provenance record
    (model, engine, parameters), ``map_attrs`` are the stored maps' own
    attributes, ``row`` the pass's run-table columns.
    """

    fields: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    map_attrs: dict = field(default_factory=dict)
    row: dict = field(default_factory=dict)


_RUNNERS: dict[str, tuple[Any, PassRunner]] = {}  # per process: pass name -> (token, runner)


def pass_runner(p: Pass) -> PassRunner:
    """This process's runner for ``p``, built on first use and kept for every later scan and task.

    One runner per pass name: a new run's pass (another model or engine) replaces the last.
    """
    token = p.token()
    found = _RUNNERS.get(p.name)
    if found is not None and found[0] == token:
        return found[1]
    runner = p.build_runner()
    _RUNNERS[p.name] = (token, runner)
    return runner


class Pass(ABC):
    """One tiled pass over an image; see the module docstring. Subclasses are frozen dataclasses.

    A pass gives its ``rule`` (:class:`GridRule`: tile and halo) and its
    ``batch_size`` (tiles per runner call) as fields or properties.
    """

    #: The kind of pass (the registry's key); ``name`` (default: the kind) names one instance in a run.
    kind: ClassVar[str] = "pass"
    #: Batches of this pass need a GPU worker (Dask's ``GPU`` resource).
    gpu: ClassVar[bool] = False
    rule: GridRule
    batch_size: int = 8

    @property
    def name(self) -> str:
        return self.kind

    # -- the runner ---------------------------------------------------------------------------------
    @abstractmethod
    def build_runner(self) -> PassRunner:
        """Build this pass's runner (loads models, compiles engines); :func:`pass_runner` caches it."""

    def runner(self) -> PassRunner:
        return pass_runner(self)

    def token(self) -> Any:
        """What identifies the runner to build (equal tokens share one runner in a process)."""
        return self

    def vector_widths(self) -> dict[str, int]:
        """Per-tile vectors the runner gives, name -> width (gathered in tile order)."""
        return {}

    def map_names(self) -> tuple[str, ...]:
        """The extra maps this pass adds to a result (staged before region writes)."""
        return ()

    # -- the judge ----------------------------------------------------------------------------------
    def judge_region(self, maps: dict[str, np.ndarray]) -> RegionJudgement:
        """Default: store each blended map as it is; no counts."""
        return RegionJudgement(arrays={name: maps[name] for name in self.map_names()})

    def finish(self, counts: dict, vectors: dict[str, np.ndarray], grid: TileGrid, runner_facts: dict) -> PassResult:
        """Default: each map's attributes say which pass and runner made it."""
        facts = {"kind": self.kind, "engine": runner_facts, "tile": self.rule.tile, "halo": self.rule.halo}
        return PassResult(map_attrs={name: dict(facts) for name in self.map_names()})

    def key(self) -> dict:
        """This pass's part of the completion key (merged into it); default: its grid under its name."""
        return {self.name: {"tile": self.rule.tile, "halo": self.rule.halo}}

    def columns(self) -> tuple[str, ...]:
        """Run-table columns this pass fills (from :attr:`PassResult.row`)."""
        return ()

    def run_facts(self) -> dict:
        """What the run's start line logs about this pass."""
        return {}

    def tile_source(self, image, info):
        """What this pass's tiles are read from, given a scan's normalised array and its
        :class:`~semtile.io.scan.ScanInfo`; default: the array itself. A pass whose network wants the
        scan transformed as a whole (statistics over the whole scan, say) returns a sliceable view."""
        return image

    def prepared(self, scans: list) -> Pass:
        """This pass, ready for ``scans`` (e.g. int8 calibration drawn from them); default: itself."""
        return self


def merge_nested(base: dict, extra: dict) -> dict:
    """``base`` updated in place with ``extra``, dict values merged recursively; returns ``base``."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge_nested(base[k], v)
        else:
            base[k] = v
    return base

"""The engine interfaces: load a model, run batches of tiles, return arrays.

:class:`Engine` runs a bundle (classifier and segmenter together) and returns
an :class:`EngineOutput`; :class:`DefectEngine` runs one defect model and
returns its inference graph's output, one array. Every backend file
(``torch_cpu``, ``onnxruntime``, ``openvino``...) holds its engines of both.

Two ways to run a batch:

* ``run(tiles)``: synchronous, the results are there when it returns;
* ``submit(tiles)`` then ``collect(handle)``: asynchronous. The runner keeps up
  to ``in_flight`` batches submitted before it collects the oldest, so a GPU
  engine copies batch ``k + 1`` in while it computes batch ``k`` and copies
  batch ``k - 1`` out. Handles are collected in the order they were submitted.
  By default ``submit`` runs the batch. A CPU engine that sets ``background``
  runs its batches on a thread of its own, one after the other, two in
  flight: the next batch starts the moment one ends, while the caller merges
  the last one (the engine's library computes without the GIL).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from semtile.errors import SemtileError
from semtile.models.kinds import DEFECT_KINDS

__all__ = ["Engine", "EngineOutput", "Submitted", "DefectEngine"]


@dataclass(frozen=True)
class EngineOutput:
    """What an engine returns for a batch of ``n`` tiles of side ``T``."""

    class_logits: np.ndarray  # (n, n_labels) float32
    mask_probs: np.ndarray  # (n, T, T) float32 adhesive probability in [0, 1]; a device tensor where
    # the engine keeps maps on its device (then maps_device() names it, and they are blended there)


@dataclass
class Submitted:
    """A batch handed to ``Engine.submit``: the engine's own ``state`` until it is collected."""

    count: int
    state: object = None


class Engine(ABC):
    """A backend that runs the classifier and the segmenter on batches of tiles.

    Tiles are float32 intensities in [0, 1], shape (n, T, T), T a multiple of
    2**d of both networks. Engines are not thread-safe; use one per thread.
    """

    name: str = "engine"
    precision: str = "f32"
    #: Batches the runner may keep submitted before collecting the oldest.
    in_flight: int = 1
    #: ``submit`` hands the batch to a thread of this engine's own: see the module docstring.
    background: bool = False

    @abstractmethod
    def run(self, tiles: np.ndarray) -> EngineOutput:
        """Run both networks on a batch of tiles."""

    def submit(self, tiles: np.ndarray) -> Submitted:
        """Start a batch; its results come from :meth:`collect`. Default: run it now; a ``background`` engine
        queues it on its own thread. Collect every submitted batch before calling :meth:`run` directly."""
        if not self.background:
            return Submitted(len(tiles), self.run(tiles))
        thread = self.__dict__.get("_thread")
        if thread is None:  # created on first use, in the process that runs the engine
            thread = self.__dict__["_thread"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        return Submitted(len(tiles), thread.submit(self.run, tiles))

    def collect(self, handle: Submitted) -> EngineOutput:
        """The results of a submitted batch (waits for them; a batch's error is raised here)."""
        return handle.state.result() if isinstance(handle.state, Future) else handle.state

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_thread"}  # a thread is this process's own

    def maps_device(self):
        """``(torch device, stream)`` where this engine leaves its mask maps, or None when they come back as numpy."""
        return None

    def describe(self) -> dict:
        """Name, precision, device and library versions, for provenance and logs."""
        return {"name": self.name, "precision": self.precision}

    @staticmethod
    def check_tiles(tiles: np.ndarray, multiple: int) -> np.ndarray:
        if not isinstance(tiles, np.ndarray) or tiles.ndim != 3 or tiles.shape[1] != tiles.shape[2]:
            raise ValueError(f"tiles must be an (n, T, T) array, got {getattr(tiles, 'shape', type(tiles))}")
        if tiles.shape[1] % multiple:
            raise ValueError(f"tile side {tiles.shape[1]} is not a multiple of {multiple}")
        return np.ascontiguousarray(tiles, dtype=np.float32)


class DefectEngine(ABC):
    """One defect model (a loaded patch classifier, autoencoder or VAE) on one backend. Not thread-safe: one
    per thread.

    ``run(tiles)`` takes float32 intensities in [0, 1] of shape (n, T, T) and
    returns what the model's inference graph gives: the anomaly map (n, T, T)
    of an autoencoder or VAE, the defect probability (n,) of a patch classifier.
    """

    name = "engine"
    precision = "f32"

    def __init__(self, model, tile: int | None):
        kind = getattr(getattr(model, "arch", None), "kind", None)
        if kind not in DEFECT_KINDS or not hasattr(model, "network"):
            raise SemtileError(f"a defect engine needs a loaded defect model, got "
                               f"{kind or type(model).__name__}")
        self.model = model
        self.tile = tile  # None: any multiple of the model's 2**stages

    def check(self, tiles: np.ndarray) -> np.ndarray:
        if not isinstance(tiles, np.ndarray) or tiles.ndim != 3 or tiles.shape[1] != tiles.shape[2]:
            raise ValueError(f"tiles must be an (n, T, T) array, got {getattr(tiles, 'shape', type(tiles))}")
        side = tiles.shape[1]
        if side % self.model.arch.multiple:
            raise ValueError(f"tile side {side} is not a multiple of {self.model.arch.multiple} ({self.model.path})")
        if self.tile is not None and side != self.tile:
            raise ValueError(f"the {self.name} engine runs {self.tile}-pixel tiles, got {side}")
        return np.ascontiguousarray(tiles, dtype=np.float32)

    @abstractmethod
    def run(self, tiles: np.ndarray) -> np.ndarray:
        """Per-pixel output of a batch of tiles (n, T, T), or one value per tile (n,), float32."""

    @staticmethod
    def _shape(out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32)
        return np.ascontiguousarray(out[:, 0] if out.ndim == 4 else out)

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "model_sha256": self.model.sha256}

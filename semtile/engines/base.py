"""The engine interface: load a model bundle, run batches of tiles, return arrays.

Two ways to run a batch:

* ``run(tiles)``: synchronous, the results are there when it returns;
* ``submit(tiles)`` then ``collect(handle)``: asynchronous. The runner keeps up
  to ``in_flight`` batches submitted before it collects the oldest, so a GPU
  engine copies batch ``k + 1`` in while it computes batch ``k`` and copies
  batch ``k - 1`` out. Handles are collected in the order they were submitted.
  CPU engines implement it trivially: ``submit`` runs the batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

__all__ = ["Engine", "EngineOutput", "Submitted"]


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

    @abstractmethod
    def run(self, tiles: np.ndarray) -> EngineOutput:
        """Run both networks on a batch of tiles."""

    def submit(self, tiles: np.ndarray) -> Submitted:
        """Start a batch; its results come from :meth:`collect`. Default: run it now."""
        return Submitted(len(tiles), self.run(tiles))

    def collect(self, handle: Submitted) -> EngineOutput:
        """The results of a submitted batch (waits for them)."""
        return handle.state

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

"""The engine interface: load a model bundle, run a batch of tiles, return arrays."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

__all__ = ["Engine", "EngineOutput"]


@dataclass(frozen=True)
class EngineOutput:
    """What an engine returns for a batch of ``n`` tiles of side ``T``."""

    class_logits: np.ndarray  # (n, n_labels) float32
    mask_probs: np.ndarray  # (n, T, T) float32 adhesive probability in [0, 1]


class Engine(ABC):
    """A backend that runs the classifier and the segmenter on batches of tiles.

    Tiles are float32 intensities in [0, 1], shape (n, T, T), T a multiple of
    2**d of both networks. Engines are not thread-safe; use one per thread.
    """

    name: str = "engine"
    precision: str = "f32"

    @abstractmethod
    def run(self, tiles: np.ndarray) -> EngineOutput:
        """Run both networks on a batch of tiles."""

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

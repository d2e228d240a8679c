"""A toy kind of map, added the way any new one is: this module and one registration, no change in execution.

The local variance of the normalised scan over each tile's window (a box
filter of 9 pixels), blended like every map; its judge counts the pixels
above a threshold into the run table's ``rough_fraction``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter

from semtile.inference.passes import Pass, PassResult, PassRunner, RegionJudgement, TileOutputs, register_pass
from semtile.inference.split import GridRule

NAME = "local_variance"


def local_variance(tiles: np.ndarray, size: int = 9) -> np.ndarray:
    """Per tile, the variance of the pixels in a ``size`` box around each pixel (the numpy oracle)."""
    mean = uniform_filter(tiles, size=(1, size, size), mode="reflect")
    return np.maximum(uniform_filter(tiles * tiles, size=(1, size, size), mode="reflect") - mean * mean, 0)


class _Runner(PassRunner):
    def run(self, tiles: np.ndarray) -> TileOutputs:
        return TileOutputs(maps={NAME: local_variance(tiles.astype(np.float64)).astype(np.float32)})

    def describe(self) -> dict:
        return {"name": "numpy", "precision": "f64"}


@register_pass
@dataclass(frozen=True)
class LocalVariancePass(Pass):
    kind = NAME

    tile: int = 64
    halo: int = 8
    threshold: float = 0.002

    @property
    def rule(self) -> GridRule:
        return GridRule.derive(self.tile, self.halo)

    def build_runner(self) -> PassRunner:
        return _Runner()

    def map_names(self) -> tuple[str, ...]:
        return (NAME,)

    def judge_region(self, maps: dict) -> RegionJudgement:
        values = np.asarray(maps[NAME])
        return RegionJudgement(arrays={NAME: values}, counts={"rough": int(np.count_nonzero(values > self.threshold)),
                                                              "pixels": int(values.size)})

    def finish(self, counts, vectors, grid, runner_facts) -> PassResult:
        base = super().finish(counts, vectors, grid, runner_facts)
        fraction = counts["rough"] / counts["pixels"]
        return PassResult(attrs={"rough_fraction": fraction}, map_attrs=base.map_attrs,
                          row={"rough_fraction": fraction})

    def key(self) -> dict:
        return {NAME: {"tile": self.tile, "halo": self.halo, "threshold": self.threshold}}

    def columns(self) -> tuple[str, ...]:
        return ("rough_fraction",)

"""Shares of a job array (``--shard``): balanced by pixels, stable when files are added, from SLURM's variables."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from semtile.errors import SemtileError
from semtile.execution.shards import SLACK, Shard, assign_shares, parse_shard, shard_from_env


def _files(n: int, seed: int = 1) -> tuple[list[Path], dict[Path, int]]:
    rng = random.Random(seed)
    paths = [Path(f"/scans/day{i // 50}/s{i:05d}.tif") for i in range(n)]
    return paths, {p: rng.choice([1, 1, 1, 4, 9]) * 2**20 for p in paths}  # mixed 1, 4 and 9 MP scans


@pytest.mark.parametrize("files, shares", [(32, 4), (400, 4), (2000, 16)])
def test_shares_are_balanced_by_pixels(files, shares):
    paths, pixels = _files(files)
    parts = assign_shares(paths, shares, pixels)
    assert sorted(p for part in parts for p in part) == sorted(paths)  # each input in exactly one share
    loads = [sum(pixels[p] for p in part) for part in parts]
    mean = sum(loads) / shares
    assert max(loads) <= (1 + SLACK) * mean + max(pixels.values())
    if files >= 400:  # many files a share: close to the mean; counts alone would not be (sizes differ 9x)
        assert max(loads) <= (1 + SLACK) * mean and min(loads) >= 0.75 * mean, [round(x / mean, 2) for x in loads]


def test_shares_are_stable_when_files_are_added():
    paths, pixels = _files(2200)
    old, new = paths[:2000], paths  # 10 % more files, e.g. the next night's folder
    before = {p: i for i, part in enumerate(assign_shares(old, 8, pixels)) for p in part}
    after = {p: i for i, part in enumerate(assign_shares(new, 8, pixels)) for p in part}
    moved = sum(before[p] != after[p] for p in old) / len(old)
    assert moved <= 0.02, moved  # splitting the sorted list in 8 slices would move about half
    # the order and the spelling of the list change nothing
    shuffled = list(reversed(new))
    assert {p: i for i, part in enumerate(assign_shares(shuffled, 8, pixels)) for p in part} == after


def test_the_share_of_an_array_task_comes_from_slurm():
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(2, 4)
    # --array=1-4: the first task is share 0
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1",
                           "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(0, 4)
    # --array=10-16:2 (4 tasks)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_STEP": "2",
                           "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(2, 4)
    for env, message in (({}, "not set"),
                         ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3"}, "not one of a regular range")):
        with pytest.raises(SemtileError, match=message):
            shard_from_env(env)
    assert parse_shard("3/4") == Shard(3, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(SemtileError, match="--shard"):
            parse_shard(bad)

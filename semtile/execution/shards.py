"""Shares of a batch for the tasks of a job array: ``semtile process ... --shard I/N``.

Each of N tasks gets the same input list and keeps its own share, so the
tasks of one array need no coordination beyond the shared store. Two
properties matter to a lab running the array every night:

* **Balanced by pixels**: a task's time is its pixels, not its file count, so
  shares are filled to about the same number of pixels (read from the TIFF
  headers; a file whose header gives none counts as its size in bytes).
* **Stable when files are added**: a file's share depends on the file itself
  (a hash of its path), not on its position in the list, so adding files moves
  few of the others. A task rerun after the folder grew (the one that failed
  last night) still finds its old files, and a whole rerun does only the new
  ones whichever task they land on.

The assignment is consistent hashing with bounded loads (Mirrokni, Thorup and
Zadimoghaddam, 2018): every file ranks the N shares by a hash of (path, share)
(rendezvous hashing) and is placed, in the order of a hash of its path, in
the first share of its ranking whose pixels stay within ``(1 + SLACK)`` of the
mean share. Pure rendezvous hashing would never move a file when others are
added but balances only on average (with 8 files a share, one share often
gets twice another's pixels); the bound trades a few moves for balance: a
share holds at most ``(1 + SLACK) * mean + largest file`` pixels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from semtile.errors import SemtileError

__all__ = ["Shard", "SLACK", "parse_shard", "shard_from_env", "assign_shares", "share_of", "input_weights"]

#: How far above the mean a share may grow before a file goes to its next-ranked share.
SLACK = 0.15


@dataclass(frozen=True)
class Shard:
    """Share ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: str) -> Shard:
    """``"I/N"`` (0 <= I < N) as a Shard; a SemtileError naming the problem otherwise."""
    try:
        index, count = (int(v) for v in str(value).split("/"))
    except ValueError:
        raise SemtileError(f"--shard {value!r}: expected I/N such as 0/4 (share I of N, I from 0 to N-1)") from None
    if count < 1 or not 0 <= index < count:
        raise SemtileError(f"--shard {value!r}: need N >= 1 and 0 <= I < N")
    return Shard(index, count)


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard:
    """The share of this SLURM array task: ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / STEP`` of
    ``SLURM_ARRAY_TASK_COUNT``, so ``--array=1-8`` and ``--array=0-30:2`` work as ``--array=0-7`` does."""
    env = os.environ if environ is None else environ
    missing = [k for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT") if not env.get(k)]
    if missing:
        raise SemtileError(f"--shard-from-env: {' and '.join(missing)} not set (not a SLURM array task; "
                           "submit with sbatch --array, or give --shard I/N)")
    try:
        task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        low = int(env.get("SLURM_ARRAY_TASK_MIN") or 0)
        step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
    except ValueError:
        raise SemtileError("--shard-from-env: the SLURM_ARRAY_TASK_* variables are not integers") from None
    offset = task - low
    if step < 1 or offset % step or not 0 <= offset // step < count:
        raise SemtileError(f"--shard-from-env: array task {task} (first {low}, step {step}, {count} tasks) is not "
                           "one of a regular range; use --array=A-B[:STEP], or --shard I/N")
    return Shard(offset // step, count)


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _key(path: Path) -> str:
    return Path(os.path.abspath(path)).as_posix()


def input_weights(paths: Sequence[Path], page: int = 0) -> dict[Path, int]:
    """Pixels of each input from its TIFF header; its size in bytes where the header gives none (PNG, a bad file)."""
    from semtile.io.tiff import scan_pixels

    weights = {}
    for path in paths:
        pixels = scan_pixels(path, page)
        if not pixels:
            try:
                pixels = Path(path).stat().st_size
            except OSError:
                pixels = 0
        weights[Path(path)] = max(1, int(pixels))
    return weights


def assign_shares(paths: Sequence[Path], count: int, weights: Mapping[Path, int] | None = None) -> list[list[Path]]:
    """The ``count`` shares of ``paths`` (each in the order given); see the module docstring."""
    if count < 1:
        raise ValueError("count must be >= 1")
    paths = list(dict.fromkeys(Path(p) for p in paths))
    weight = {p: max(1, int((weights or {}).get(p, 1))) for p in paths}
    cap = (1 + SLACK) * sum(weight.values()) / count
    loads = [0] * count
    share: dict[Path, int] = {}
    for path in sorted(paths, key=lambda p: (_digest(_key(p)), _key(p))):
        key, w = _key(path), weight[path]
        ranking = sorted(range(count), key=lambda s: _digest(f"{key}\0{s}"), reverse=True)
        chosen = next((s for s in ranking if loads[s] == 0 or loads[s] + w <= cap), None)
        if chosen is None:  # every share is full: the least loaded (only with files larger than the slack)
            chosen = min(range(count), key=lambda s: (loads[s], ranking.index(s)))
        share[path] = chosen
        loads[chosen] += w
    shares: list[list[Path]] = [[] for _ in range(count)]
    for path in paths:
        shares[share[path]].append(path)
    return shares


def share_of(paths: Sequence[Path], shard: Shard, page: int = 0) -> list[Path]:
    """The inputs of ``shard`` among ``paths`` (pixels read from the headers)."""
    paths = list(paths)
    return assign_shares(paths, shard.count, input_weights(paths, page))[shard.index]

"""What the fault tests' real processes share: the environment that runs this tree with the hold hook."""

from __future__ import annotations

import os
from pathlib import Path

import semtile

HOOK = Path(__file__).with_name("hold_hook")


def hooked_env(**extra) -> dict:
    """This process's environment, with the tree under test and the hold hook (hold_hook) on PYTHONPATH."""
    code = str(Path(semtile.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HOOK), code]), **extra}

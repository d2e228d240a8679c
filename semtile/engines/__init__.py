"""Inference engines behind one small interface (one file per backend)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from semtile.engines.base import Engine, EngineOutput
from semtile.errors import SemtileError

if TYPE_CHECKING:  # keep `import semtile.engines` free of torch for a fast CLI start
    from semtile.modelio import ModelBundle

__all__ = ["Engine", "EngineOutput", "ENGINE_NAMES", "create_engine"]

ENGINE_NAMES = ("auto", "torch-cpu")


def create_engine(name: str, bundle: ModelBundle, *, threads: int | None = None) -> tuple[Engine, str]:
    """Build the engine called ``name``; returns it with a sentence saying why it was chosen."""
    if name not in ENGINE_NAMES:
        raise SemtileError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    from semtile.engines.torch_cpu import TorchCPUEngine

    reason = "asked for" if name == "torch-cpu" else "the only engine available in this version"
    return TorchCPUEngine(bundle, threads=threads), reason

"""The model file that produced a result, found from its provenance: the explain commands' one lookup."""

from __future__ import annotations

from pathlib import Path

from semtile.errors import ModelError

__all__ = ["recorded_model"]


def recorded_model(result, part: str) -> Path:
    """The weights of ``part`` (classifier or segmenter) that made ``result``, by the path in its provenance.

    A built-in part whose recorded file is gone (another install) is the
    built-in one of this install; the caller checks the sha256. A part that is
    not there is a ModelError naming the recorded file and its sha256.
    """
    from semtile.models.io import builtin_bundle_dir
    from semtile.models.naming import builtin_parts

    model = result.provenance.get("model") or {}
    recorded = model.get(part) or {}
    path = Path(recorded["path"]) if recorded.get("path") else None
    if path is not None and path.is_file() and path.is_absolute():
        return path
    if part in builtin_parts(model):
        return builtin_bundle_dir() / f"{part}.pt"
    if path is None:
        raise ModelError(f"{result.group_path}: the result's provenance names no {part}; give it with --model")
    sha = recorded.get("sha256") or "unknown"
    where = "" if path.is_absolute() else " (recorded relative to the folder its run started in)"
    raise ModelError(f"{result.name}: the {part} that produced it, {path}{where} (sha256 {sha[:12]}...), is not "
                     f"there; give it with --model")

"""A bioimage.io model package read into what semtile's pass needs (plain, picklable data).

:func:`read_package` takes a ``.zip``, a folder holding ``rdf.yaml`` or
``bioimageio.yaml``, or such a file; a zip is unpacked once into semtile's
cache (``$SEMTILE_CACHE/bioimageio/SHA256``), keyed by its sha256. The
description is loaded and validated by ``bioimageio.spec`` (0.4 packages are
converted to 0.5), with the files' sha256s checked. Only 2-D image models
run: one input with the spatial axes ``y`` and ``x`` (any order, with batch,
channel and size-1 axes beside), outputs whose spatial axes follow the input
at scale 1.
"""

from __future__ import annotations

import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from semtile.errors import SemtileError
from semtile.io.discover import sha256_file
from semtile.models.bioimageio import require

__all__ = ["Axis", "TensorSpec", "PackageModel", "read_package", "WEIGHT_FORMATS", "POINTWISE_POST"]

#: The weights formats semtile's engines run, in the order they are preferred.
WEIGHT_FORMATS = ("onnx", "pytorch_state_dict", "torchscript")
#: Postprocessing applied tile by tile (pointwise); ``binarize`` becomes the threshold rule.
POINTWISE_POST = ("sigmoid", "clip", "scale_linear", "fixed_zero_mean_unit_variance", "ensure_dtype", "binarize")
_PRE = ("fixed_zero_mean_unit_variance", "zero_mean_unit_variance", "scale_range", "scale_linear", "clip",
        "sigmoid", "ensure_dtype", "binarize")


@dataclass(frozen=True)
class Axis:
    type: str  # batch, channel, space, index, time
    id: str
    size: object = None  # int, ("param", min, step), ("ref", tensor, axis, offset), or None (any)
    halo: int = 0
    scale: float = 1.0
    channel_names: tuple = ()


@dataclass(frozen=True)
class TensorSpec:
    id: str
    axes: tuple  # of Axis, in the tensor's order
    ops: tuple = ()  # (name, kwargs) of its pre- or postprocessing, in order
    dtype: str = "float32"

    @property
    def order(self) -> str:
        return "".join(a.id[0] if a.type in ("space", "batch", "channel") else "?" for a in self.axes)

    def axis(self, axis_id: str) -> Axis | None:
        return next((a for a in self.axes if a.id == axis_id), None)

    @property
    def spatial(self) -> bool:
        return self.axis("y") is not None and self.axis("x") is not None

    @property
    def channels(self) -> int:
        c = next((a for a in self.axes if a.type == "channel"), None)
        return 1 if c is None else int(c.size)

    @property
    def halo(self) -> int:
        return max((a.halo for a in self.axes if a.id in ("y", "x")), default=0)


@dataclass(frozen=True)
class PackageModel:
    """What semtile knows of a package once read; see the module docstring."""

    source: str  # what was given, absolute
    root: str  # the folder holding the description (the unpacked zip)
    sha256: str  # of the zip, or of the description file for a folder
    id: str | None
    name: str
    version: str | None
    format_version: str
    input: TensorSpec
    outputs: tuple  # of TensorSpec
    weights: dict  # format -> {"path": absolute, "sha256": ..., ...}
    semtile: dict = field(default_factory=dict)  # config.semtile of a package semtile wrote

    def provenance(self) -> dict:
        return {"bioimageio": {"source": self.source, "id": self.id, "name": self.name, "version": self.version,
                               "sha256": self.sha256, "format_version": self.format_version,
                               "weights": {k: v["sha256"] for k, v in self.weights.items()}}}


def _cache_root() -> Path:
    return Path(os.environ.get("SEMTILE_CACHE", Path.home() / ".cache" / "semtile")) / "bioimageio"


def _unpack(path: Path, sha: str) -> Path:
    """The zip unpacked once into the cache (staged, then renamed into place)."""
    target = _cache_root() / sha[:32]
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f"{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise SemtileError(f"{path}: unsafe path {member!r} in the package")
            archive.extractall(staged)
        (staged / ".complete").write_text("")
        try:
            staged.rename(target)
        except OSError:
            if not (target / ".complete").is_file():
                raise
    except zipfile.BadZipFile as exc:
        raise SemtileError(f"{path}: not a readable zip ({exc})") from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return target


def _description_file(path: Path) -> tuple[Path, str]:
    """(description file, package sha256) of what was given."""
    if path.is_file() and path.suffix.lower() == ".zip":
        sha = sha256_file(path)
        root = _unpack(path, sha)
    elif path.is_dir():
        root = path
        sha = ""
    elif path.is_file():
        return path, sha256_file(path)
    else:
        raise SemtileError(f"{path}: no such package")
    for name in ("bioimageio.yaml", "rdf.yaml"):
        if (root / name).is_file():
            return root / name, sha or sha256_file(root / name)
    found = sorted(root.glob("*.bioimageio.yaml")) + sorted(root.glob("*rdf.yaml"))
    if found:
        return found[0], sha or sha256_file(found[0])
    raise SemtileError(f"{path}: no rdf.yaml or bioimageio.yaml in the package")


def _size(size) -> object:
    if size is None or isinstance(size, int):
        return size
    name = type(size).__name__
    if name == "ParameterizedSize":
        return ("param", int(size.min), int(size.step))
    if name == "SizeReference":
        return ("ref", str(size.tensor_id), str(size.axis_id), int(size.offset))
    return None  # data-dependent


def _axes(descr) -> tuple:
    out = []
    for a in descr.axes:
        kind = a.type
        size = len(a.channel_names) if kind == "channel" else (1 if kind == "batch" else _size(a.size))
        out.append(Axis(type=kind, id=str(a.id), size=size, halo=int(getattr(a, "halo", 0) or 0),
                        scale=float(getattr(a, "scale", 1.0) or 1.0),
                        channel_names=tuple(map(str, getattr(a, "channel_names", ()) or ()))))
    return tuple(out)


def _ops(items) -> tuple:
    ops = []
    for op in items or ():
        kwargs = op.kwargs.model_dump(mode="json") if getattr(op, "kwargs", None) is not None else {}
        ops.append((str(op.id), kwargs))
    return tuple(ops)


def _check(where: str, model_in: TensorSpec, outputs: tuple) -> None:
    if not model_in.spatial:
        raise SemtileError(f"{where}: input {model_in.id!r} has axes {[a.id for a in model_in.axes]}: semtile runs "
                           "2-D models (axes y and x)")
    for a in model_in.axes:
        if a.type in ("space", "time", "index") and a.id not in ("y", "x") and a.size not in (1, None) \
                and not (isinstance(a.size, tuple) and a.size[0] == "param" and a.size[1] == 1):
            raise SemtileError(f"{where}: input axis {a.id!r} of size {a.size}: semtile runs 2-D models "
                               "(other axes must have size 1)")
    for name, _ in model_in.ops:
        if name not in _PRE:
            raise SemtileError(f"{where}: preprocessing {name!r} is not supported (supported: {', '.join(_PRE)})")
    for out in outputs:
        for a in out.axes:
            if a.id in ("y", "x") and (a.scale != 1.0 or (isinstance(a.size, tuple) and a.size[0] == "ref"
                                                          and a.size[3] != 0)):
                raise SemtileError(f"{where}: output {out.id!r} axis {a.id} is not at the input's scale 1")
        for name, kwargs in out.ops:
            if name not in POINTWISE_POST or (name == "ensure_dtype" and kwargs.get("dtype") != "float32"):
                raise SemtileError(f"{where}: postprocessing {name!r} of output {out.id!r} needs the whole output at "
                                   f"once; semtile applies only pointwise ones ({', '.join(POINTWISE_POST)})")
    if not any(o.spatial for o in outputs):
        raise SemtileError(f"{where}: no output has the axes y and x (a semantic segmentation or map)")


def read_package(path: str | Path) -> PackageModel:
    """Read and validate a bioimage.io model package (zip, folder, or its description file); SemtileError naming
    the package and what is wrong."""
    require("`--model PACKAGE` (a bioimage.io model)")
    from bioimageio.spec import load_model_description
    from bioimageio.spec._internal.common_nodes import InvalidDescr

    given = Path(path).absolute()
    rdf, sha = _description_file(given)
    try:
        descr = load_model_description(rdf, format_version="latest", perform_io_checks=True)
    except Exception as exc:  # noqa: BLE001 - bioimageio raises ValueError, ValidationError...
        raise SemtileError(f"{given}: not a valid bioimage.io model package ({str(exc).splitlines()[0]})") from None
    if isinstance(descr, InvalidDescr):
        raise SemtileError(f"{given}: not a valid bioimage.io model package: "
                           f"{descr.validation_summary.format()[:800]}")
    if len(descr.inputs) != 1:
        raise SemtileError(f"{given}: {len(descr.inputs)} inputs; semtile runs models of one image input")
    model_in = TensorSpec(id=str(descr.inputs[0].id), axes=_axes(descr.inputs[0]),
                          ops=_ops(descr.inputs[0].preprocessing))
    outputs = tuple(TensorSpec(id=str(o.id), axes=_axes(o), ops=_ops(o.postprocessing)) for o in descr.outputs)
    _check(str(given), model_in, outputs)
    weights = {}
    root = rdf.parent
    for fmt in WEIGHT_FORMATS:
        entry = getattr(descr.weights, fmt, None)
        if entry is None:
            continue
        file = _local(entry.source, root)
        if file is None:
            continue
        info = {"path": str(file), "sha256": str(entry.sha256) if entry.sha256 else sha256_file(file)}
        if fmt == "pytorch_state_dict":
            arch = entry.architecture
            info["callable"] = str(arch.callable)
            info["kwargs"] = dict(arch.kwargs)
            if hasattr(arch, "import_from"):
                info["import_from"] = str(arch.import_from)
            else:
                info["file"] = str(_local(arch.source, root))
        weights[fmt] = info
    if not weights:
        raise SemtileError(f"{given}: no weights semtile can run (it runs {', '.join(WEIGHT_FORMATS)}; the package "
                           f"has {', '.join(k for k, v in descr.weights.model_dump().items() if v) or 'none'})")
    config = descr.config.model_dump(mode="json") if descr.config is not None else {}
    return PackageModel(source=str(given), root=str(root), sha256=sha, id=str(descr.id) if descr.id else None,
                        name=str(descr.name), version=str(descr.version) if descr.version else None,
                        format_version=str(descr.format_version), input=model_in, outputs=outputs,
                        weights=weights, semtile=dict(config.get("semtile") or {}))


def _local(source, root: Path) -> Path | None:
    """The package file ``source`` names, as a local path (None where it is a URL: nothing is fetched)."""
    text = str(getattr(source, "path", source))
    if text.startswith(("http://", "https://")):
        return None
    file = Path(text)
    file = file if file.is_absolute() else root / file
    return file if file.is_file() else None

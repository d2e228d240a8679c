"""``semtile export MODEL --bioimageio OUT.zip``: a semtile model as a bioimage.io 0.5 model package.

A bundle (segmenter + classifier) becomes one package of one input and two
outputs: ``mask`` (the adhesive probability, ``(b, c=1, y, x)``, with the
halo semtile blends) and ``class_logits`` (``(b, c=n_labels)``, one row per
tile). An autoencoder or VAE becomes a package with the output
``anomaly_map``; a patch classifier one with ``defect_probability``
(``(b, c=1)`` of its fixed patch).

The input is the scan's gray values (0..255) of a tile, ``(b, c=1, y, x)``,
of a size ``min + n * step`` (step: the network's stride ``2**d``; min: the
smallest such size holding four halos), with semtile's own fixed
normalisation as preprocessing (``fixed_zero_mean_unit_variance``, mean 0,
std 255: the networks take gray in [0, 1]). Weights: ONNX (dynamic batch and,
where the network allows, tile size) and a PyTorch state dict whose
architecture is :class:`semtile.models.bioimageio.network.PackagedNetwork`,
each with its sha256. The test tensors are a tile of a sample scan and what
semtile's own engine (torch-cpu, f32) gives for it; the cover is the sample
scan beside its whole-scan result through semtile's tiled, blended path.
The card's facts (architecture, labels, tile, halo, training data and
configuration, papers) go into the package's ``config.semtile`` and its
documentation. The package is validated by ``bioimageio.spec`` before it is
kept.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semtile.errors import ModelError
from semtile.io.discover import sha256_file
from semtile.models.bioimageio import require
from semtile.models.bioimageio.card import card_facts, documentation, sample_scan, write_cover

__all__ = ["ExportedPackage", "export_bioimageio", "INPUT_ID", "RAW_MAX", "OUTPUT_IDS"]

INPUT_ID = "raw"
#: The package's input is 8-bit gray; semtile's networks take gray / RAW_MAX.
RAW_MAX = 255.0
OUTPUT_IDS = {"segmenter": "mask", "classifier": "class_logits", "autoencoder": "anomaly_map",
              "vae": "anomaly_map", "patch-classifier": "defect_probability"}
OPSET = 17


@dataclass
class ExportedPackage:
    path: Path
    name: str
    tile: int
    halo: int
    sha256: dict  # file -> sha256 of the weights entries
    validation: str  # bioimageio.spec's status
    test_input_shape: tuple


def _parts(model) -> dict:
    from semtile.models.io import ModelBundle

    if isinstance(model, ModelBundle):
        return {"segmenter": model.segmenter, "classifier": model.classifier}
    return {model.arch.kind: model}


def _network(parts: dict):
    from semtile.models.bioimageio.network import PackagedNetwork

    net = PackagedNetwork({name: part.arch.to_dict() for name, part in parts.items()})
    return net.load_parts({name: part.network.state_dict() for name, part in parts.items()}).eval()


def _sizes(net, tile: int, multiple: int) -> bool:
    """Whether the network takes tiles of another size than ``tile`` (dense layers fix it)."""
    import torch

    try:
        with torch.inference_mode():
            net(torch.zeros(1, 1, tile + multiple, tile + multiple))
        return True
    except RuntimeError:
        return False


def _export_onnx(net, path: Path, tile: int, names: list[str], dynamic_size: bool, multiple: int) -> None:
    import onnx
    import onnxruntime as ort
    import torch

    example = torch.rand(2, 1, tile, tile, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", 2: "y", 3: "x"} if dynamic_size else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation; checked below
        torch.onnx.export(net, (example,), str(path), opset_version=OPSET, dynamo=False, input_names=[INPUT_ID],
                          output_names=names, dynamic_axes={INPUT_ID: axes, **{n: {0: "batch"} for n in names}})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    side = tile + multiple if dynamic_size else tile  # another tile size too, where the network allows it
    check = torch.rand(3, 1, side, side, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = net(check)
    expected = [e.numpy() for e in (expected if isinstance(expected, tuple) else (expected,))]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_ID: check.numpy()})
    for name, e, g in zip(names, expected, got):
        if e.shape != g.shape or not np.allclose(g, e, atol=1e-4 * max(1.0, float(np.abs(e).max())), rtol=1e-3):
            raise ModelError(f"{path}: ONNX output {name} differs from PyTorch")


def _engine_outputs(model, tiles01: np.ndarray, names: list[str]) -> dict:
    """What semtile's torch-cpu engine (f32) gives for tiles in [0, 1], by output id, shaped as the package says."""
    from semtile.engines import EngineSettings, create_engine
    from semtile.models.io import ModelBundle

    engine, _ = create_engine("torch-cpu", model, EngineSettings(tile=tiles01.shape[-1], precision="f32",
                                                                  batch_size=len(tiles01)))
    if isinstance(model, ModelBundle):
        out = engine.run(tiles01)
        return {"mask": np.asarray(out.mask_probs, np.float32)[:, None],
                "class_logits": np.asarray(out.class_logits, np.float32)}
    values = np.asarray(engine.run(tiles01), np.float32)
    return {names[0]: values[:, None] if values.ndim in (1, 3) else values}


def _whole_scan(model, gray: np.ndarray, tile: int, halo: int) -> np.ndarray | None:
    """The sample's whole-scan map through semtile's tiled, blended path (the cover's right half)."""
    from semtile.engines import EngineSettings, create_engine
    from semtile.inference.one_image import run_array
    from semtile.inference.split import TileGrid
    from semtile.models.io import ModelBundle

    engine, _ = create_engine("torch-cpu", model, EngineSettings(tile=tile, precision="f32"))
    if isinstance(model, ModelBundle):
        def infer(t):
            return {"map": engine.run(t).mask_probs}
    elif model.arch.is_anomaly:
        def infer(t):
            return {"map": engine.run(t)}
    else:
        return None
    return np.asarray(run_array(gray, TileGrid(gray.shape, tile, halo), infer)["map"])


def export_bioimageio(model, out: str | Path, *, tile: int | None = None, halo: int | None = None,
                      sample: str | Path | None = None) -> ExportedPackage:
    """Write ``model`` (a bundle or a loaded defect model) as a bioimage.io 0.5 package at ``out`` (a .zip, or a
    folder); validated by bioimageio.spec. ``sample``: the scan the test tensors and the cover come from
    (default: a synthetic etched-copper scan, the demo's)."""
    require("`semtile export --bioimageio`")
    from semtile.inference.split import GridRule
    from semtile.models.export import export_tile, model_kind

    model_kind(model)
    parts = _parts(model)
    multiple = max(p.arch.multiple for p in parts.values())
    tile = export_tile(model, tile)
    if halo is None and len(parts) == 1 and next(iter(parts.values())).halo is not None:
        halo = next(iter(parts.values())).halo
    rule = GridRule.derive(tile, halo, multiple=multiple, aligned=len(parts) == 1, what=f"export at tile {tile}")
    out = Path(out)
    net = _network(parts)
    dynamic = _sizes(net, tile, multiple)
    names = [OUTPUT_IDS[name] for name in net.names]
    gray, sample_name = sample_scan(sample)
    from semtile.inference.split import read_windows

    centre = np.array([[(gray.shape[0] - tile) // 2, (gray.shape[1] - tile) // 2]], dtype=np.int64)
    tile01 = read_windows(gray, centre, tile)  # (1, T, T) in [0, 1]
    outputs = _engine_outputs(model, tile01, names)
    whole = _whole_scan(model, gray, tile, rule.halo)
    with tempfile.TemporaryDirectory(prefix="semtile-bioimageio-") as tmp:
        folder = Path(tmp)
        import torch

        torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, folder / "weights.pt")
        _export_onnx(net, folder / "weights.onnx", tile, names, dynamic, multiple)
        np.save(folder / "test_input.npy", (tile01[:, None] * RAW_MAX).astype(np.float32))
        for name in names:
            np.save(folder / f"test_{name}.npy", outputs[name])
        write_cover(folder / "cover.png", gray, whole)
        facts = card_facts(model, parts, tile, rule.halo, multiple, sample_name)
        (folder / "README.md").write_text(documentation(facts))
        descr = _description(facts, parts, net, folder, tile, rule.halo, multiple, dynamic, names)
        summary = _save(descr, out)
        sha = {"weights.pt": sha256_file(folder / "weights.pt"), "weights.onnx": sha256_file(folder / "weights.onnx")}
    return ExportedPackage(path=out, name=facts["name"], tile=tile, halo=rule.halo, sha256=sha, validation=summary,
                           test_input_shape=(1, 1, tile, tile))


def _description(facts: dict, parts: dict, net, folder: Path, tile: int, halo: int, multiple: int, dynamic: bool,
                 names: list[str]):
    import torch
    from bioimageio.spec.model import v0_5 as bio

    def space_in(axis: str):
        size = bio.ParameterizedSize(min=_min_size(halo, multiple), step=multiple) if dynamic else tile
        return bio.SpaceInputAxis(id=bio.AxisId(axis), size=size)

    def space_out(axis: str, with_halo: bool):
        ref = bio.SizeReference(tensor_id=bio.TensorId(INPUT_ID), axis_id=bio.AxisId(axis))
        if with_halo and halo:
            return bio.SpaceOutputAxisWithHalo(id=bio.AxisId(axis), size=ref, halo=halo)
        return bio.SpaceOutputAxis(id=bio.AxisId(axis), size=ref)

    inputs = [bio.InputTensorDescr(
        id=bio.TensorId(INPUT_ID),
        description="SEM gray values (0..255) of a tile; the data bar removed",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("gray")]), space_in("y"),
              space_in("x")],
        test_tensor=bio.FileDescr(source=folder / "test_input.npy"),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, RAW_MAX)),
        preprocessing=[bio.FixedZeroMeanUnitVarianceDescr(
            kwargs=bio.FixedZeroMeanUnitVarianceKwargs(mean=0.0, std=RAW_MAX))],
    )]
    outputs = []
    for part, name in zip(net.names, names):
        if name in ("mask", "anomaly_map"):
            axes = [bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(
                "adhesive" if name == "mask" else "anomaly")]), space_out("y", True), space_out("x", True)]
            what = ("probability that a pixel is adhesive (rough) surface; semtile thresholds it at 0.5"
                    if name == "mask" else "per-pixel anomaly score (reconstruction error)")
        else:
            labels = parts["classifier"].labels if part == "classifier" else ["defect"]
            axes = [bio.BatchAxis(), bio.ChannelAxis(channel_names=[f"label_{v}" for v in labels])]
            what = ("class logits of the tile, one per label (etching condition); semtile averages the tiles' "
                    "probabilities over a scan" if part == "classifier" else "probability the patch is a defect")
        outputs.append(bio.OutputTensorDescr(id=bio.TensorId(name), description=what, axes=axes,
                                             test_tensor=bio.FileDescr(source=folder / f"test_{name}.npy")))
    architecture = bio.ArchitectureFromLibraryDescr(
        import_from="semtile.models.bioimageio.network", callable=bio.Identifier("PackagedNetwork"),
        kwargs={"parts": {name: part.arch.to_dict() for name, part in parts.items()}})
    weights = bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt", sha256=sha256_file(folder / "weights.pt"), architecture=architecture,
            pytorch_version=bio.Version(torch.__version__.split("+")[0])),
        onnx=bio.OnnxWeightsDescr(source=folder / "weights.onnx", sha256=sha256_file(folder / "weights.onnx"),
                                  opset_version=OPSET, parent="pytorch_state_dict"),
    )
    cite = [bio.CiteEntry(text=paper["text"], doi=bio.Doi(paper["doi"])) for paper in facts["papers"]
            if paper.get("doi")]
    return bio.ModelDescr(
        name=facts["name"], description=facts["description"],
        authors=[bio.Author(name="semtile")], cite=cite, license=bio.LicenseId("MIT"),
        documentation=bio.FileDescr(source=folder / "README.md"), covers=[bio.FileDescr(source=folder / "cover.png")], tags=facts["tags"],
        version=facts["version"], inputs=inputs, outputs=outputs, weights=weights,
        config={"semtile": facts["config"]},
    )


def _min_size(halo: int, multiple: int) -> int:
    """The smallest tile semtile blends: a multiple of the stride holding four halos (and one stride)."""
    return max(multiple, -(-4 * halo // multiple) * multiple)


def _save(descr, out: Path) -> str:
    """Write the package (zip or folder) and validate what was written; bioimageio.spec's status."""
    from bioimageio.spec import load_description, save_bioimageio_package, save_bioimageio_package_as_folder
    from bioimageio.spec._internal.common_nodes import InvalidDescr

    if isinstance(descr, InvalidDescr):
        raise ModelError(f"{out}: not a valid bioimage.io package: {descr.validation_summary.format()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staged, ignore_errors=True) if staged.is_dir() else staged.unlink(missing_ok=True)
    if out.suffix.lower() == ".zip":
        save_bioimageio_package(descr, output_path=staged)
    else:
        save_bioimageio_package_as_folder(descr, output_path=staged)
    loaded = load_description(staged / "rdf.yaml" if staged.is_dir() else staged, perform_io_checks=True)
    summary = loaded.validation_summary
    if isinstance(loaded, InvalidDescr) or summary.status not in ("passed", "valid-format"):
        raise ModelError(f"{out}: bioimageio.spec finds the package invalid: {summary.format()}")
    if out.is_dir():
        shutil.rmtree(out)
    staged.replace(out)
    return summary.status

"""A bioimage.io package built by hand from a small network that is not semtile's (tests and benchmarks use it).

Not semtile's in every way that matters to an importer: its own architecture
(a dilated convolution stack with a residual path, no pooling), the input in
channels-last order ``byxc`` with a size-1 ``z`` axis in front of the
channels, any tile of ``32 + n`` pixels, ``scale_range`` percentile
normalisation (1 to 99.8) per image, TorchScript and ONNX weights (no
importable architecture at all), the output ``prob`` ``bcyx`` (a probability) with a
``binarize`` threshold as postprocessing, and a second
output, a 2-channel ``edges`` map. Its receptive field (radius 13 pixels)
is larger than its declared halo (8 pixels), as in many shared packages:
tiles cropped at the halo then show seams.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

RADIUS = 13  # receptive field radius: 1 + 2 + 4 + 4 + 2 = 13
HALO = 8
THRESHOLD = 0.55


def _network():
    import torch
    from torch import nn

    class DilatedNet(nn.Module):
        def __init__(self):
            super().__init__()
            dil = (1, 2, 4, 4, 2)
            chans = (1, 8, 8, 8, 8, 8)
            self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=d, dilation=d,
                                                 padding_mode="zeros") for i, d in enumerate(dil))
            self.head = nn.Conv2d(8, 3, 1)

        def forward(self, x):  # x: (b, y, x, z=1, c=1)
            h = x[:, :, :, 0, :].permute(0, 3, 1, 2)
            skip = h
            for conv in self.convs:
                h = torch.tanh(conv(h))
            out = self.head(h) + skip  # a residual path from the input
            return torch.sigmoid(out[:, :1]), torch.sigmoid(out[:, 1:])

    torch.manual_seed(7)
    net = DilatedNet().eval()
    with torch.no_grad():  # a response that varies with the texture, not flat
        for conv in net.convs:
            conv.weight.mul_(1.5)
    return net


def _scale_range(x: np.ndarray) -> np.ndarray:
    lo, hi = np.quantile(x.astype(np.float64), [0.01, 0.998])
    return ((x - np.float32(lo)) / np.float32(hi - lo + 1e-6)).astype(np.float32)


def build_foreign_package(folder: Path, sample: np.ndarray) -> Path:
    """Write the package (a folder with ``rdf.yaml``) into ``folder``; ``sample``: a 2-D uint8 image for the test
    tensors. Returns the package's zip."""
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = _network()
    raw = sample[:96, :128].astype(np.float32)[None, :, :, None, None]  # b y x z c
    with torch.inference_mode():
        prob, edges = net(torch.from_numpy(_scale_range(raw)))
    np.save(folder / "in.npy", raw)
    np.save(folder / "prob.npy", (prob.numpy() > THRESHOLD).astype(np.float32))
    np.save(folder / "edges.npy", edges.numpy().astype(np.float32))
    example = torch.from_numpy(_scale_range(raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, example).save(str(folder / "net.torchscript"))
        torch.onnx.export(net, (example,), str(folder / "net.onnx"), opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["prob", "edges"],
                          dynamic_axes={"image": {0: "b", 1: "y", 2: "x"}, "prob": {0: "b", 2: "y", 3: "x"},
                                        "edges": {0: "b", 2: "y", 3: "x"}})
    (folder / "README.md").write_text("# dilated test net\n\nA small dilated CNN for tests.\n")
    size = bio.ParameterizedSize(min=32, step=1)
    ref = {axis: bio.SizeReference(tensor_id=bio.TensorId("image"), axis_id=bio.AxisId(axis)) for axis in "yx"}
    inputs = [bio.InputTensorDescr(
        id=bio.TensorId("image"),
        axes=[bio.BatchAxis(), bio.SpaceInputAxis(id=bio.AxisId("y"), size=size),
              bio.SpaceInputAxis(id=bio.AxisId("x"), size=size), bio.SpaceInputAxis(id=bio.AxisId("z"), size=1),
              bio.ChannelAxis(channel_names=[bio.Identifier("intensity")])],
        test_tensor=bio.FileDescr(source=folder / "in.npy"),
        preprocessing=[bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
            axes=[bio.AxisId(a) for a in ("y", "x", "z", "channel")], min_percentile=1.0, max_percentile=99.8))],
    )]
    outputs = [
        bio.OutputTensorDescr(
            id=bio.TensorId("prob"),
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("foreground")]),
                  bio.SpaceOutputAxisWithHalo(id=bio.AxisId("y"), size=ref["y"], halo=HALO),
                  bio.SpaceOutputAxisWithHalo(id=bio.AxisId("x"), size=ref["x"], halo=HALO)],
            test_tensor=bio.FileDescr(source=folder / "prob.npy"),
            postprocessing=[bio.BinarizeDescr(kwargs=bio.BinarizeKwargs(threshold=THRESHOLD))],
        ),
        bio.OutputTensorDescr(
            id=bio.TensorId("edges"),
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("a"), bio.Identifier("b")]),
                  bio.SpaceOutputAxisWithHalo(id=bio.AxisId("y"), size=ref["y"], halo=HALO),
                  bio.SpaceOutputAxisWithHalo(id=bio.AxisId("x"), size=ref["x"], halo=HALO)],
            test_tensor=bio.FileDescr(source=folder / "edges.npy"),
        ),
    ]
    weights = bio.WeightsDescr(
        torchscript=bio.TorchscriptWeightsDescr(source=folder / "net.torchscript",
                                                pytorch_version=bio.Version(torch.__version__.split("+")[0])),
        onnx=bio.OnnxWeightsDescr(source=folder / "net.onnx", opset_version=17, parent="torchscript"),
    )
    descr = bio.ModelDescr(
        name="dilated test net", description="a small dilated CNN, not semtile's",
        authors=[bio.Author(name="test")], cite=[bio.CiteEntry(text="none", doi=bio.Doi("10.5281/zenodo.1"))],
        license=bio.LicenseId("MIT"), documentation=bio.FileDescr(source=folder / "README.md"),
        inputs=inputs, outputs=outputs, weights=weights, version="1.2.3",
    )
    return Path(save_bioimageio_package(descr, output_path=folder / "dilated.zip"))


def core_prediction(package, raw: np.ndarray, block: int | None = None, output: str = "prob") -> np.ndarray:
    """bioimageio.core's prediction of ``output`` (its postprocessing skipped: the probability) for a 2-D raw image,
    whole (``block`` None: one pass over the image as it is, statistics over the image) or tile by tile in blocks
    of ``block`` pixels (its halo cropped)."""
    from bioimageio.core import create_prediction_pipeline, load_description, predict
    from bioimageio.core.digest_spec import create_sample_for_model

    x = raw.astype(np.float32)[None, :, :, None, None]
    descr = load_description(str(package))
    if block is None:
        # Without the halo padding predict() adds: that padding joins the percentiles of the image.
        pipeline = create_prediction_pipeline(descr)
        sample = pipeline.predict_sample_without_blocking(
            create_sample_for_model(descr, inputs={"image": x}, sample_id="whole"), skip_postprocessing=True,
            skip_input_padding=True, skip_output_cropping=True)
    else:
        shape = {"image": {"batch": 1, "y": block, "x": block, "z": 1, "channel": 1}}
        sample = predict(model=descr, inputs={"image": x}, skip_postprocessing=True, input_block_shape=shape)
    value = sample.members[output].data.values
    return np.asarray(value[0, 0] if value.shape[1] == 1 else value[0], dtype=np.float32)


def excess_step(m: np.ndarray, ref: np.ndarray) -> float:
    """The largest step between neighbouring pixels of ``m`` beyond the reference's own step there (rows and
    columns): a tile seam shows as a jump the whole-image prediction does not have."""
    dy = np.abs(np.diff(m, axis=0) - np.diff(ref, axis=0))
    dx = np.abs(np.diff(m, axis=1) - np.diff(ref, axis=1))
    return float(max(dy.max(), dx.max()))


def away_from_seams(shape: tuple, seams_y, seams_x, margin: int, border: int) -> np.ndarray:
    """Pixels at least ``margin`` from every seam and ``border`` from the image's edges."""
    keep = np.ones(shape, dtype=bool)
    for s in seams_y:
        keep[max(0, s - margin): s + margin] = False
    for s in seams_x:
        keep[:, max(0, s - margin): s + margin] = False
    keep[:border], keep[-border:], keep[:, :border], keep[:, -border:] = False, False, False, False
    return keep

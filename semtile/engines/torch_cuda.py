"""PyTorch engine on one CUDA device: reduced precision, channels-last, one CUDA graph.

Both networks are copied, converted to the engine's dtype (a real conversion
of the weights, not autocast), put in ``channels_last`` layout and moved to the
device. With ``cuda_graphs=True`` (the default) a single CUDA graph running
both networks on a static input of shape ``(batch_size, 1, tile, tile)`` is
captured once, after a warm-up on a side stream, and replayed for every chunk
of ``batch_size`` tiles; a final partial chunk is zero-padded to
``batch_size`` and its results trimmed.

Tiles of a side other than ``tile`` are not an error: they run eagerly (same
networks, same dtype, no graph), chunk by chunk, and ``describe()`` counts
how many batches took that path. The graph's float32 input is converted to
the engine dtype inside the graph; logits and the sigmoid are computed in
float32 from the network's last layer, so results are always float32.

Host I/O goes through pinned buffers with non-blocking copies on a dedicated
stream: the CPU copy of chunk ``k + 1`` into the pinned buffer overlaps the
GPU's work on chunk ``k``.

Precision "f32" follows PyTorch's global TF32 settings
(``torch.backends.cudnn.allow_tf32`` is True by default, so convolutions on
Ampere and newer use TF32 unless the caller turns it off before building the
engine; the value at construction is baked into the captured graph and
reported by ``describe()``). The engine does not change those global flags.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from semtile.engines.base import Engine, EngineOutput
from semtile.errors import SemtileError
from semtile.models.io import ModelBundle

__all__ = ["TorchCUDAEngine", "torch_cuda_available", "bf16_supported", "PRECISIONS"]

log = logging.getLogger(__name__)

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
_ALIASES = {"fp32": "f32", "float32": "f32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
_WARMUP_ITERATIONS = 3


def torch_cuda_available() -> tuple[bool, str]:
    """Whether this PyTorch can run on a CUDA device, and why (not)."""
    if torch.version.cuda is None:
        return False, f"this PyTorch ({torch.__version__}) was built without CUDA support"
    try:
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    except Exception as exc:  # a broken driver can raise instead of returning False
        return False, f"CUDA initialisation failed: {exc}"
    if not available or count == 0:
        return False, (f"PyTorch {torch.__version__} has CUDA {torch.version.cuda} support but no CUDA device "
                       "is visible (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides it)")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(count))
    return True, f"{count} CUDA device(s): {names}"


def bf16_supported() -> bool:
    """Native bfloat16 on the current CUDA device (emulated bf16 is too slow to be worth it)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # PyTorch before 2.3 has no including_emulation argument
        return bool(torch.cuda.is_bf16_supported())


def _canonical_precision(precision: str) -> str:
    value = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if value not in PRECISIONS:
        raise SemtileError(f"the torch-cuda engine runs {', '.join(PRECISIONS)}, not {precision!r}")
    return value


def _prepare(network: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    net = copy.deepcopy(network).eval()
    net = net.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


class TorchCUDAEngine(Engine):
    """Both networks on one CUDA device, optionally replayed from one CUDA graph."""

    name = "torch-cuda"

    def __init__(self, bundle: ModelBundle, *, precision: str = "fp16", batch_size: int = 8, tile: int = 256,
                 cuda_graphs: bool = True, device: int = 0):
        precision = _canonical_precision(precision)
        if int(batch_size) < 1:
            raise SemtileError(f"the torch-cuda engine needs a batch size of at least 1, got {batch_size}")
        self.multiple = max(bundle.classifier.arch.multiple, bundle.segmenter.arch.multiple)
        if int(tile) < 1 or int(tile) % self.multiple:
            raise SemtileError(f"tile {tile} must be a positive multiple of {self.multiple}")
        ok, reason = torch_cuda_available()
        if not ok:
            raise SemtileError(f"the torch-cuda engine needs a CUDA GPU: {reason}")
        if not 0 <= int(device) < torch.cuda.device_count():
            raise SemtileError(f"CUDA device {device} does not exist ({torch.cuda.device_count()} visible)")
        self.device = torch.device("cuda", int(device))
        if precision == "bf16":
            with torch.cuda.device(self.device):
                if not bf16_supported():
                    raise SemtileError(f"precision 'bf16' is not supported on {torch.cuda.get_device_name(self.device)}"
                                       " (needs compute capability 8.0 or newer); use 'fp16' or 'f32'")
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.batch_size = int(batch_size)
        self.tile = int(tile)
        self.cuda_graphs = bool(cuda_graphs)
        self.n_labels = bundle.classifier.arch.n_labels
        self.eager_batches = 0  # batches of another tile size that ran without the graph
        self.tf32 = bool(torch.backends.cudnn.allow_tf32) if precision == "f32" else False

        with torch.cuda.device(self.device):
            self.classifier = _prepare(bundle.classifier.network, self.device, self.dtype)
            self.segmenter = _prepare(bundle.segmenter.network, self.device, self.dtype)
            self.stream = torch.cuda.Stream(self.device)
            # Pinned host buffers per tile side: (input, logits, probabilities), grown on demand.
            self._host: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
            self._reserve_host(self.batch_size, self.tile)
            self.graph: torch.cuda.CUDAGraph | None = None
            if self.cuda_graphs:
                self._capture()
            torch.cuda.synchronize(self.device)

    # -- the computation -------------------------------------------------------------------

    def _forward(self, x32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (b, 1, T, T) on the device -> float32 logits (b, K) and probabilities (b, T, T)."""
        x = x32.to(self.dtype).contiguous(memory_format=torch.channels_last)
        logits = self.classifier(x).float()
        probs = torch.sigmoid(self.segmenter(x).float())[:, 0]
        return logits, probs

    def _capture(self) -> None:
        shape = (self.batch_size, 1, self.tile, self.tile)
        self._static_in = torch.zeros(shape, device=self.device, dtype=torch.float32)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode():
            with torch.cuda.stream(side):  # warm-up: cuDNN plans, allocator pools, lazy init
                for _ in range(_WARMUP_ITERATIONS):
                    self._forward(self._static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._static_logits, self._static_probs = self._forward(self._static_in)
            except RuntimeError as exc:
                raise SemtileError(f"CUDA graph capture failed ({exc}); retry with cuda_graphs=False") from exc
        self.graph = graph

    # -- host buffers ---------------------------------------------------------------------

    def _reserve_host(self, rows: int, side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        buffers = self._host.get(side)
        if buffers is None or buffers[0].shape[0] < rows:
            rows = max(rows, self.batch_size)
            buffers = (torch.empty((rows, side, side), dtype=torch.float32, pin_memory=True),
                       torch.empty((rows, self.n_labels), dtype=torch.float32, pin_memory=True),
                       torch.empty((rows, side, side), dtype=torch.float32, pin_memory=True))
            self._host[side] = buffers
        return buffers

    # -- Engine ---------------------------------------------------------------------------

    def run(self, tiles: np.ndarray) -> EngineOutput:
        tiles = self.check_tiles(tiles, self.multiple)
        n, side = tiles.shape[0], tiles.shape[1]
        if n == 0:
            return EngineOutput(class_logits=np.zeros((0, self.n_labels), np.float32),
                                mask_probs=np.zeros((0, side, side), np.float32))
        use_graph = self.graph is not None and side == self.tile
        if self.graph is not None and not use_graph:
            self.eager_batches += 1
            log.debug("torch-cuda: tile side %d differs from the graph's %d; running eagerly", side, self.tile)
        bs = self.batch_size
        padded = -(-n // bs) * bs if use_graph else n
        host_in, host_logits, host_probs = self._reserve_host(padded, side)
        host_in_np = host_in.numpy()
        with torch.cuda.device(self.device), torch.inference_mode(), torch.cuda.stream(self.stream):
            for start in range(0, n, bs):
                stop = min(start + bs, n)
                # CPU copy into pinned memory; it overlaps the GPU's work on the previous chunk.
                host_in_np[start:stop] = tiles[start:stop]
                if use_graph:
                    end = start + bs
                    if stop < end:  # partial final chunk: pad with zeros, trim below
                        host_in_np[stop:end] = 0.0
                    self._static_in[:, 0].copy_(host_in[start:end], non_blocking=True)
                    self.graph.replay()
                    host_logits[start:end].copy_(self._static_logits, non_blocking=True)
                    host_probs[start:end].copy_(self._static_probs, non_blocking=True)
                else:
                    x = host_in[start:stop].to(self.device, non_blocking=True)[:, None]
                    logits, probs = self._forward(x)
                    host_logits[start:stop].copy_(logits, non_blocking=True)
                    host_probs[start:stop].copy_(probs, non_blocking=True)
            self.stream.synchronize()
        # Copy out of the pinned buffers: they are reused by the next call.
        return EngineOutput(class_logits=host_logits[:n].numpy().copy(), mask_probs=host_probs[:n].numpy().copy())

    def describe(self) -> dict:
        props = torch.cuda.get_device_properties(self.device)
        return {
            "name": self.name,
            "precision": self.precision,
            "device": f"cuda:{self.device.index}",
            "device_name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda_graphs": self.graph is not None,
            "batch_size": self.batch_size,
            "tile": self.tile,
            "eager_batches": self.eager_batches,
            "tf32": self.tf32,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }

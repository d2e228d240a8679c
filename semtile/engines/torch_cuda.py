"""PyTorch engine on one CUDA device: fp16/bf16, BatchNorm folded, channels-last, CUDA graphs, batches in flight.

Both networks are copied, their BatchNorm layers folded into the convolutions
before them (``torch.nn.utils.fusion.fuse_conv_bn_eval``), converted to the
engine's dtype (a real conversion of the weights, not autocast), put in
``channels_last`` layout and moved to the device. ``compile`` runs them
through ``torch.compile`` (Inductor, Triton kernels) first.

**Batches in flight.** The engine owns ``in_flight`` slots, each with a pinned
host input buffer, device buffers and CUDA events. ``submit(tiles)`` fills a
slot's pinned buffer, queues its host-to-device copy on the copy-in stream,
the network on the compute stream (after the copy's event) and, unless the
outputs stay on the device, the device-to-host copy on the copy-out stream
(after the compute's event), and returns at once. ``collect`` waits for that
slot's last event. So while the host packs batch ``k + 1``, the GPU computes
batch ``k`` and copies batch ``k - 1`` back. ``run`` is submit-and-collect
over chunks of ``batch_size`` tiles, several in flight.

**CUDA graph.** With ``cuda_graphs=True`` (the default) one graph running
both networks on a static ``(batch_size, 1, tile, tile)`` float32 input is
captured once, after a warm-up on a side stream, and replayed for every batch
(a partial batch is zero-padded, its results trimmed). Tiles of another side
run eagerly (same networks, same dtype); ``describe()`` counts those batches.

**Maps on the device.** With ``keep_on_device=True`` the masks that
``collect`` returns are CUDA tensors (a view of the slot's buffer, valid
until the slot is reused), and :meth:`maps_device` names the device and the compute stream, where
the device merger blends them into a canvas on the GPU: only finished
whole-image maps come back. ``run`` always returns numpy.

Precision ``f32`` follows PyTorch's TF32 setting for convolutions
(``torch.backends.cudnn.allow_tf32``, on by default), reported by describe().

One engine per GPU: ``device`` picks it. A Dask worker started with
``--resources GPU=1`` and ``CUDA_VISIBLE_DEVICES`` set to its GPU sees that
GPU as device 0 (semtile's SLURM recipe and worker plugin do this).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch

from semtile.engines.base import Engine, EngineOutput, Submitted
from semtile.errors import SemtileError
from semtile.models.fold import fold_batchnorm
from semtile.models.io import ModelBundle

__all__ = ["TorchCUDAEngine", "torch_cuda_available", "bf16_supported", "PRECISIONS",
           "COMPILE_MODES"]

log = logging.getLogger(__name__)

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
_ALIASES = {"fp32": "f32", "float32": "f32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
#: torch.compile modes the engine accepts (CUDA graphs are the engine's own, so Inductor's are left off).
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
_WARMUP_ITERATIONS = 3


def torch_cuda_available() -> tuple[bool, str]:
    """Whether this PyTorch can run on a CUDA device, and why (not)."""
    if torch.version.cuda is None:
        return False, f"this PyTorch ({torch.__version__}) was built without CUDA support"
    try:
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    except Exception as exc:  # noqa: BLE001 - a broken driver can raise anything instead of returning False
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


def canonical_precision(precision: str) -> str:
    value = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if value not in PRECISIONS:
        raise SemtileError(f"the torch-cuda engine runs {', '.join(PRECISIONS)}, not {precision!r}")
    return value


def _prepare(network: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, int]:
    net = copy.deepcopy(network).float().eval()
    folded = fold_batchnorm(net)
    net = net.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net, folded


@dataclass(eq=False)
class _Slot:
    """One batch's buffers and events: pinned host memory, device memory, and where its work stands."""

    host_in: torch.Tensor  # (B, T, T) float32, pinned
    host_logits: torch.Tensor  # (B, K) float32, pinned
    host_probs: torch.Tensor  # (B, T, T) float32, pinned
    dev_in: torch.Tensor  # (B, 1, T, T) float32
    dev_logits: torch.Tensor  # (B, K) float32
    dev_probs: torch.Tensor  # (B, T, T) float32
    copied_in: torch.cuda.Event
    computed: torch.cuda.Event
    done: torch.cuda.Event  # the slot's last work: its buffers may be reused after it
    used: bool = False


class TorchCUDAEngine(Engine):
    """Both networks on one CUDA device, replayed from one CUDA graph, several batches in flight."""

    name = "torch-cuda"

    def __init__(self, bundle: ModelBundle, *, precision: str = "fp16", batch_size: int = 8, tile: int = 256,
                 cuda_graphs: bool = True, compile: str | None = None, in_flight: int = 3,
                 keep_on_device: bool = True, device: int = 0):
        precision = canonical_precision(precision)
        if int(batch_size) < 1:
            raise SemtileError(f"the torch-cuda engine needs a batch size of at least 1, got {batch_size}")
        if int(in_flight) < 1:
            raise SemtileError(f"the torch-cuda engine needs at least 1 batch in flight, got {in_flight}")
        if compile is not None and compile not in COMPILE_MODES:
            raise SemtileError(f"torch.compile mode must be one of {', '.join(COMPILE_MODES)}, not {compile!r}")
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
        self.compile_mode = compile
        self.in_flight = int(in_flight)
        self.keep_on_device = bool(keep_on_device)
        self.n_labels = bundle.classifier.arch.n_labels
        self.eager_batches = 0  # batches of another tile size or count that ran without the graph
        self.tf32 = bool(torch.backends.cudnn.allow_tf32) if precision == "f32" else False

        with torch.cuda.device(self.device):
            self.classifier, folded_c = _prepare(bundle.classifier.network, self.device, self.dtype)
            self.segmenter, folded_s = _prepare(bundle.segmenter.network, self.device, self.dtype)
            self.folded_batchnorms = folded_c + folded_s
            if compile is not None:
                self.classifier = torch.compile(self.classifier, mode=compile, dynamic=False)
                self.segmenter = torch.compile(self.segmenter, mode=compile, dynamic=False)
            self.copy_in = torch.cuda.Stream(self.device)
            self.compute_stream = torch.cuda.Stream(self.device)
            self.copy_out = torch.cuda.Stream(self.device)
            self._slots = [self._new_slot() for _ in range(self.in_flight)]
            self._next_slot = 0
            self.graph: torch.cuda.CUDAGraph | None = None
            self._warm_up_and_capture()
            torch.cuda.synchronize(self.device)

    # -- the computation -------------------------------------------------------------------

    def _forward(self, x32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (b, 1, T, T) on the device -> float32 logits (b, K) and probabilities (b, T, T)."""
        x = x32.to(self.dtype).contiguous(memory_format=torch.channels_last)
        logits = self.classifier(x).float()
        probs = torch.sigmoid(self.segmenter(x).float())[:, 0]
        return logits, probs

    def _warm_up_and_capture(self) -> None:
        self._static_in = torch.zeros((self.batch_size, 1, self.tile, self.tile), device=self.device,
                                      dtype=torch.float32)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode():
            with torch.cuda.stream(side):  # cuDNN plans, allocator pools, lazy init, Inductor's compilation
                for _ in range(_WARMUP_ITERATIONS):
                    self._forward(self._static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            if not self.cuda_graphs:
                return
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._static_logits, self._static_probs = self._forward(self._static_in)
            except RuntimeError as exc:
                raise SemtileError(f"CUDA graph capture failed ({exc}); retry with cuda_graphs=False") from exc
        self.graph = graph

    def _new_slot(self) -> _Slot:
        b, t, k = self.batch_size, self.tile, self.n_labels
        return _Slot(host_in=torch.empty((b, t, t), dtype=torch.float32, pin_memory=True),
                     host_logits=torch.empty((b, k), dtype=torch.float32, pin_memory=True),
                     host_probs=torch.empty((b, t, t), dtype=torch.float32, pin_memory=True),
                     dev_in=torch.empty((b, 1, t, t), dtype=torch.float32, device=self.device),
                     dev_logits=torch.empty((b, k), dtype=torch.float32, device=self.device),
                     dev_probs=torch.empty((b, t, t), dtype=torch.float32, device=self.device),
                     copied_in=torch.cuda.Event(), computed=torch.cuda.Event(), done=torch.cuda.Event())

    # -- Engine: asynchronous ----------------------------------------------------------------

    def submit(self, tiles: np.ndarray, *, to_host: bool | None = None) -> Submitted:
        tiles = self.check_tiles(tiles, self.multiple)
        n, side = tiles.shape[0], tiles.shape[1]
        to_host = not self.keep_on_device if to_host is None else to_host
        if n == 0:
            return Submitted(0, EngineOutput(class_logits=np.zeros((0, self.n_labels), np.float32),
                                             mask_probs=np.zeros((0, side, side), np.float32)))
        if side != self.tile or n > self.batch_size:
            # Not the slots' shape: an eager, synchronous run (counted, so a wrong tile size shows).
            self.eager_batches += 1
            log.debug("torch-cuda: %d tiles of side %d differ from the slots' %d x %d; running eagerly",
                      n, side, self.batch_size, self.tile)
            return Submitted(n, self._run_eager(tiles))
        slot = self._slots[self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self._slots)
        if slot.used:
            slot.done.synchronize()  # its previous batch is finished with the buffers
        slot.used = True
        host_in = slot.host_in.numpy()
        host_in[:n] = tiles  # the CPU's copy into pinned memory: overlaps the GPU's work on earlier slots
        if n < self.batch_size:
            host_in[n:] = 0.0
        with torch.cuda.device(self.device), torch.inference_mode():
            with torch.cuda.stream(self.copy_in):
                slot.dev_in[:, 0].copy_(slot.host_in, non_blocking=True)
                slot.copied_in.record(self.copy_in)
            with torch.cuda.stream(self.compute_stream):
                self.compute_stream.wait_event(slot.copied_in)
                if self.graph is not None:
                    self._static_in.copy_(slot.dev_in)
                    self.graph.replay()
                    logits, probs = self._static_logits, self._static_probs
                else:
                    logits, probs = self._forward(slot.dev_in)
                slot.dev_logits.copy_(logits)
                slot.dev_probs.copy_(probs)
                slot.computed.record(self.compute_stream)
            with torch.cuda.stream(self.copy_out):
                self.copy_out.wait_event(slot.computed)
                slot.host_logits.copy_(slot.dev_logits, non_blocking=True)
                if to_host:
                    slot.host_probs.copy_(slot.dev_probs, non_blocking=True)
                slot.done.record(self.copy_out)
        return Submitted(n, (slot, to_host))

    def collect(self, handle: Submitted) -> EngineOutput:
        if isinstance(handle.state, EngineOutput):
            return handle.state
        slot, to_host = handle.state
        n = handle.count
        slot.done.synchronize()
        logits = slot.host_logits[:n].numpy().copy()
        # Pinned buffers are reused by the slot's next batch: copy out. Device maps stay a view (see the docstring).
        probs = slot.host_probs[:n].numpy().copy() if to_host else slot.dev_probs[:n]
        return EngineOutput(class_logits=logits, mask_probs=probs)

    def run_on_device(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ``(n, T, T)`` tiles already on the engine's device -> logits ``(n, K)`` and probabilities
        ``(n, T, T)``, on it, queued on the compute stream (the caller's work on them must run there too).

        The same graph, zero padding and eager fallback as :meth:`submit`, so the same tiles give the same
        bits. Results from the graph are views of its static outputs: valid until the next call.
        """
        n, side = int(tiles.shape[0]), int(tiles.shape[-1])
        with torch.cuda.device(self.device), torch.inference_mode(), torch.cuda.stream(self.compute_stream):
            if n == 0:
                return (torch.zeros((0, self.n_labels), device=self.device),
                        torch.zeros((0, side, side), device=self.device))
            if side != self.tile or n > self.batch_size:
                self.eager_batches += 1
                parts = [self._forward(tiles[s: s + self.batch_size, None]) for s in range(0, n, self.batch_size)]
                return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            self._static_in[:n, 0].copy_(tiles)
            if n < self.batch_size:
                self._static_in[n:].zero_()
            if self.graph is None:
                logits, probs = self._forward(self._static_in)
            else:
                self.graph.replay()
                logits, probs = self._static_logits, self._static_probs
            return logits[:n], probs[:n]

    def maps_device(self):
        return (self.device, self.compute_stream) if self.keep_on_device else None

    # -- Engine: synchronous -------------------------------------------------------------------

    def _run_eager(self, tiles: np.ndarray) -> EngineOutput:
        logits_out, probs_out = [], []
        with torch.cuda.device(self.device), torch.inference_mode(), torch.cuda.stream(self.compute_stream):
            for start in range(0, len(tiles), self.batch_size):
                x = torch.from_numpy(tiles[start: start + self.batch_size]).pin_memory()
                x = x.to(self.device, non_blocking=True)[:, None]
                logits, probs = self._forward(x)
                logits_out.append(logits.cpu().numpy())
                probs_out.append(probs.cpu().numpy())
        return EngineOutput(class_logits=np.concatenate(logits_out), mask_probs=np.concatenate(probs_out))

    def run(self, tiles: np.ndarray) -> EngineOutput:
        tiles = self.check_tiles(tiles, self.multiple)
        n, side = tiles.shape[0], tiles.shape[1]
        if n == 0 or side != self.tile:
            return self.collect(self.submit(tiles, to_host=True))
        pending, outputs = [], []
        for start in range(0, n, self.batch_size):
            if len(pending) >= self.in_flight:
                outputs.append(self.collect(pending.pop(0)))
            pending.append(self.submit(tiles[start: start + self.batch_size], to_host=True))
        outputs += [self.collect(handle) for handle in pending]
        return EngineOutput(class_logits=np.concatenate([o.class_logits for o in outputs]),
                            mask_probs=np.concatenate([o.mask_probs for o in outputs]))

    def describe(self) -> dict:
        props = torch.cuda.get_device_properties(self.device)
        return {
            "name": self.name,
            "precision": self.precision,
            "device": f"cuda:{self.device.index}",
            "device_name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda_graphs": self.graph is not None,
            "compile": self.compile_mode,
            "batchnorms_folded": self.folded_batchnorms,
            "batch_size": self.batch_size,
            "in_flight": self.in_flight,
            "maps_on_device": self.keep_on_device,
            "tile": self.tile,
            "eager_batches": self.eager_batches,
            "tf32": self.tf32,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }

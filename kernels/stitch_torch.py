"""The blend of :mod:`semtile.kernels.stitch` as torch ops, for canvases that live on a GPU.

Same contract as the Numba kernel: ``canvas += window * tile`` and
``weights += window`` over the part of each tile inside the image, then
``canvas / weights`` where the weights are positive, else 0. Tiles, window,
canvas and weights are torch tensors on one device (CUDA, or the CPU for
tests); tiles may be float16 or bfloat16, accumulation is float32.

The scatter is one ``index_add_`` per batch over flat pixel indices, with the
pixels of a tile that fall outside the image sent to one spare element past
the end of the flat canvas: no boolean masking, so nothing waits on the GPU.
On CUDA ``index_add_`` adds with atomics, so the order of additions to a
pixel (at most four tiles overlap) is not fixed: results match the Numba
kernel to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import torch

__all__ = ["flat_canvas", "canvas_view", "accumulate_tiles_torch", "normalise_canvas_torch"]


def flat_canvas(shape: tuple[int, int], device, channels: int = 0) -> torch.Tensor:
    """A zeroed float32 canvas of ``H*W + 1`` elements (per channel): the last one takes what falls outside."""
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"canvas shape must be positive, got {shape}")
    size = height * width + 1
    return torch.zeros((channels, size) if channels else (size,), dtype=torch.float32, device=device)


def canvas_view(flat: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The ``(H, W)`` (or ``(C, H, W)``) image of a flat canvas, without its spare element."""
    height, width = int(shape[0]), int(shape[1])
    return flat[..., : height * width].unflatten(-1, (height, width))


def _flat_indices(origins: torch.Tensor, side: int, shape: tuple[int, int]) -> torch.Tensor:
    """``(n, T, T)`` int64 flat canvas index of every tile pixel; pixels outside the image -> ``H*W``."""
    height, width = int(shape[0]), int(shape[1])
    steps = torch.arange(side, device=origins.device, dtype=torch.int64)
    rows = origins[:, 0, None] + steps  # (n, T)
    cols = origins[:, 1, None] + steps
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    flat = rows[:, :, None] * width + cols[:, None, :]
    return torch.where(inside, flat, torch.full_like(flat, height * width))


def accumulate_tiles_torch(canvas: torch.Tensor, weights: torch.Tensor | None, tiles: torch.Tensor,
                           origins: torch.Tensor, window: torch.Tensor, shape: tuple[int, int]) -> None:
    """Add ``window * tile`` of every tile into the flat ``canvas`` (and ``window`` into ``weights``), in place.

    Parameters
    ----------
    canvas : float32 ``(H*W + 1,)`` from :func:`flat_canvas`.
    weights : float32 ``(H*W + 1,)`` or None (maps after the first share the weights, added once).
    tiles : ``(n, T, T)`` or ``(n, 1, T, T)``, any float dtype, on the canvas's device.
    origins : int64 ``(n, 2)`` top-left ``(row, col)`` of each tile; may be negative or reach past the image.
    window : float32 ``(T, T)`` blending weights.
    shape : ``(H, W)`` of the image.
    """
    if tiles.ndim == 4 and tiles.shape[1] == 1:
        tiles = tiles[:, 0]
    if tiles.ndim != 3 or tiles.shape[1] != tiles.shape[2]:
        raise ValueError(f"tiles must be (n, T, T), got {tuple(tiles.shape)}")
    n, side = tiles.shape[0], tiles.shape[1]
    if tuple(window.shape) != (side, side):
        raise ValueError(f"window shape {tuple(window.shape)} does not match tiles of side {side}")
    if tuple(origins.shape) != (n, 2):
        raise ValueError(f"origins must be ({n}, 2), got {tuple(origins.shape)}")
    expected = int(shape[0]) * int(shape[1]) + 1
    for name, flat in (("canvas", canvas), ("weights", weights)):
        if flat is not None and (flat.dtype != torch.float32 or tuple(flat.shape) != (expected,)):
            raise ValueError(f"{name} must be a float32 flat canvas of {expected} elements, "
                             f"got {flat.dtype} {tuple(flat.shape)}")
    if n == 0:
        return
    index = _flat_indices(origins.to(device=canvas.device, dtype=torch.int64), side, shape).reshape(-1)
    canvas.index_add_(0, index, (tiles.to(torch.float32) * window).reshape(-1))
    if weights is not None:
        weights.index_add_(0, index, window.expand(n, side, side).reshape(-1))


def normalise_canvas_torch(canvas: torch.Tensor, weights: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``canvas / weights`` where the weights are positive, else 0, as an ``(H, W)`` (or ``(C, H, W)``) tensor."""
    image = canvas_view(canvas, shape)
    weight = canvas_view(weights, shape)
    return torch.where(weight > 0, image / torch.where(weight > 0, weight, torch.ones_like(weight)),
                       torch.zeros_like(image))

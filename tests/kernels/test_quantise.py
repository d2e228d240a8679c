"""The one-pass quantiser against the NumPy chain it replaces (nan_to_num, clip, * float32(scale), rint)."""

from __future__ import annotations

import numpy as np
import pytest

from semtile.kernels.quantise import quantise_unit
from semtile.store.encoding import encode_probability_u8, quantise_image


def _oracle(v: np.ndarray, scale: int, dtype) -> np.ndarray:
    band = np.nan_to_num(v.astype(np.float32), nan=0.0)
    np.clip(band, 0.0, 1.0, out=band)
    band *= np.float32(scale)
    return np.rint(band).astype(dtype)


def _values(shape, seed):
    rng = np.random.default_rng(seed)
    v = rng.uniform(-0.2, 1.2, shape).astype(np.float32)
    flat = v.ravel()
    flat[:8] = [np.nan, np.inf, -np.inf, 0.0, 1.0, -0.0, 0.5, np.float32(0.5 / 255)]
    steps = (np.arange(256, dtype=np.float32) + np.float32(0.5)) / np.float32(255)  # ties and near-ties
    flat[8: 8 + 256] = steps
    return v


@pytest.mark.parametrize("scale, dtype", [(255, np.uint8), (65535, np.uint16)])
def test_quantise_unit_is_the_numpy_chain_byte_for_byte(scale, dtype):
    v = _values((97, 301), 3)
    out = quantise_unit(v, scale, np.empty(v.shape, dtype))
    assert np.array_equal(out, _oracle(v, scale, dtype))


def test_the_store_encoders_use_it_and_keep_other_shapes():
    v = _values((1500, 40), 5)  # more rows than one band
    assert np.array_equal(encode_probability_u8(v), _oracle(v, 255, np.uint8))
    assert np.array_equal(quantise_image(v, np.uint16), _oracle(v, 65535, np.uint16))
    stack = _values((3, 20, 30), 6)  # not 2-D: the NumPy path
    assert np.array_equal(encode_probability_u8(stack), _oracle(stack, 255, np.uint8))
    assert encode_probability_u8(np.float32(0.5)) == 128 and encode_probability_u8(np.float64(np.nan)) == 0


def test_quantise_unit_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="float32"):
        quantise_unit(np.zeros((2, 2)), 255, np.empty((2, 2), np.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        quantise_unit(np.zeros((2, 2), np.float32), 65535, np.empty((2, 2), np.uint8))

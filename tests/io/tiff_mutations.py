"""Mutated TIFF files for fuzzing ``open_scan``: small valid scans with broken headers and tags.

Shared by ``tests/io/test_fuzz_tiff.py`` (Hypothesis draws the mutations) and
``benchmarks/fuzz_tiff.py`` (a seeded :class:`random.Random` draws them): both
give :func:`draw_mutations` a *chooser* with ``choice(sequence)`` and
``integer(low, high)``, then write :func:`apply_mutations` of a base file.

:func:`check_case` is the property: opening the file and computing its valid
area either gives float32 gray in [0, 1] of the shape the header claims, or
raises semtile's :class:`~semtile.errors.ImageError` naming the file. Anything
else (another exception, a wrong shape or range) escapes as an exception.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from semtile.errors import ImageError
from semtile.io.tiff import open_scan

#: Bytes per value of each TIFF data type.
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_FORMATS = {1: "B", 2: "B", 3: "H", 4: "I", 5: "I", 6: "b", 7: "B", 8: "h", 9: "i", 10: "i", 11: "I", 12: "Q",
            13: "I", 16: "Q", 17: "q", 18: "Q"}

DIMENSIONS = [0, 1, 2, 3, 7, 8, 15, 16, 17, 23, 24, 31, 32, 33, 64, 95, 96, 97, 127, 128, 129, 255, 256, 1000,
              4096, 65535, 65536, 100000, 2**31 - 1, 2**31, 2**32 - 1]
#: Interesting values of each tag the fuzzer changes, besides values near the original.
TAG_VALUES = {
    256: DIMENSIONS,  # ImageWidth
    257: DIMENSIONS,  # ImageLength
    278: DIMENSIONS,  # RowsPerStrip
    322: DIMENSIONS,  # TileWidth
    323: DIMENSIONS,  # TileLength
    258: [0, 1, 2, 4, 7, 8, 12, 16, 24, 32, 64, 128, 255, 65535],  # BitsPerSample
    259: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 32773, 32946, 34712, 34887, 34925, 34933, 50000, 50001, 65535],  # Compression
    262: [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 32844, 32845, 34892, 65535],  # Photometric
    277: [0, 1, 2, 3, 4, 5, 255, 65535],  # SamplesPerPixel
    284: [0, 1, 2, 3],  # PlanarConfiguration
    317: [0, 1, 2, 3, 34892, 65535],  # Predictor
    338: [0, 1, 2, 3],  # ExtraSamples
    339: [0, 1, 2, 3, 4, 5, 6, 7, 65535],  # SampleFormat
    273: ["offset"], 324: ["offset"],  # StripOffsets, TileOffsets
    279: ["count"], 325: ["count"],  # StripByteCounts, TileByteCounts
    320: [0, 255, 65535],  # ColorMap
}
#: Tags a mutation may turn an entry into (which also adds tags the base lacks).
RETAGS = sorted(TAG_VALUES) + [254, 266, 270, 274, 305, 330, 347, 34118, 34665, 34680, 34682]
TOKENS = [b"inf", b"nan", b"-1", b"1e400", b"99999999999999999999", b"[", b"]", b"=", b"\n", b"\x00", b"\xc3\xa9",
          b"{", b"}", b'"', b"0"]


class Chooser:
    """What :func:`draw_mutations` needs from a source of randomness."""

    def choice(self, items):  # pragma: no cover - an interface
        raise NotImplementedError

    def integer(self, low: int, high: int) -> int:  # pragma: no cover - an interface
        raise NotImplementedError


class RandomChooser(Chooser):
    def __init__(self, rng):
        self.rng = rng

    def choice(self, items):
        return items[self.rng.randrange(len(items))]

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)


# --------------------------------------------------------------------------
# the first IFD of a classic TIFF


@dataclass
class Entry:
    pos: int  # of the 12-byte entry
    tag: int
    type: int
    count: int
    data: int  # where the values are: inside the entry or at its offset


def parse_ifd(data: bytes) -> tuple[str, int, list[Entry]]:
    """Byte order, IFD offset and entries of the first IFD; no entries where it cannot be read."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return order, 0, []
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    if ifd + 2 > len(data):
        return order, ifd, []
    n = struct.unpack_from(order + "H", data, ifd)[0]
    entries = []
    for i in range(n):
        pos = ifd + 2 + 12 * i
        if pos + 12 > len(data):
            break
        tag, typ, count, value = struct.unpack_from(order + "HHII", data, pos)
        size = TYPE_SIZES.get(typ, 1) * count
        entries.append(Entry(pos, tag, typ, count, pos + 8 if size <= 4 else value))
    return order, ifd, entries


def header_dims(data: bytes) -> tuple[int, int] | None:
    """(ImageLength, ImageWidth) as the first IFD states them, if it does so plainly."""
    order, _, entries = parse_ifd(data)
    dims = {}
    for e in entries:
        if e.tag in (256, 257) and e.count == 1 and e.type in (3, 4):
            if e.tag in dims:
                return None  # stated twice
            dims[e.tag] = struct.unpack_from(order + _FORMATS[e.type], data, e.data)[0]
    return (dims[257], dims[256]) if len(dims) == 2 else None


# --------------------------------------------------------------------------
# mutations: tuples, so that Hypothesis can print and shrink them


def draw_mutations(chooser: Chooser, data: bytes, most: int = 4) -> list[tuple]:
    """Between 1 and ``most`` mutations of the file ``data``."""
    _, ifd, entries = parse_ifd(data)
    tags = [e.tag for e in entries]
    fuzzed = [t for t in tags if t in TAG_VALUES] or tags
    out = []
    for _ in range(chooser.integer(1, most)):
        kind = chooser.choice(["value", "value", "value", "value", "count", "type", "retag", "flip", "flip",
                               "text", "truncate", "header", "entries"])
        if kind == "value":
            tag = chooser.choice(fuzzed)
            pick = chooser.choice(TAG_VALUES.get(tag, [0]) + ["near", "random"])
            if pick == "near":
                pick = ("near", chooser.integer(-3, 3))
            elif pick == "random":
                pick = ("random", chooser.integer(0, 2**32 - 1))
            out.append(("value", tag, chooser.integer(0, 7), pick))
        elif kind == "count":
            out.append(("count", chooser.choice(fuzzed), chooser.choice([0, 1, 2, 3, 7, 100, 65535, 2**32 - 1])))
        elif kind == "type":
            out.append(("type", chooser.choice(fuzzed), chooser.choice([0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 16, 19])))
        elif kind == "retag":
            out.append(("retag", chooser.integer(0, 40), chooser.choice(RETAGS)))
        elif kind == "flip":
            out.append(("flip", chooser.integer(0, 2 + 12 * len(entries) + 4), 1 << chooser.integer(0, 7)))
        elif kind == "text":  # anywhere in a text tag, or as the value of its k-th "key=value"
            out.append(("text", chooser.integer(0, 40), chooser.choice(["anywhere", "value"]),
                        chooser.integer(0, 10**6), chooser.choice(TOKENS)))
        elif kind == "truncate":
            out.append(("truncate", chooser.integer(0, 1000)))
        elif kind == "header":
            out.append(("header", chooser.choice([0, 1, 4, 7, 8, ifd + 1, ifd + 12, 2**31, 2**32 - 1, len(data)])))
        else:
            out.append(("entries", chooser.choice([0, 1, 2, 5, len(entries) - 1, len(entries) + 1, 4096, 65535])))
    return out


def apply_mutations(data: bytes, mutations: list[tuple]) -> bytes:
    """``data`` with each mutation applied in turn; one that does not apply changes nothing."""
    buf = bytearray(data)
    for m in mutations:
        buf = _apply(buf, m)
    return bytes(buf)


def _apply(buf: bytearray, m: tuple) -> bytearray:
    order, ifd, entries = parse_ifd(bytes(buf))
    kind = m[0]
    by_tag = {e.tag: e for e in reversed(entries)}  # the first entry of a tag
    if kind == "value" and m[1] in by_tag:
        e = by_tag[m[1]]
        _, _, index, value = m
        fmt = _FORMATS.get(e.type)
        if fmt is None or e.count == 0:
            return buf
        size = TYPE_SIZES[e.type]
        pos = e.data + size * (index % e.count)
        if isinstance(value, tuple):  # ("near", step) or ("random", value)
            old = struct.unpack_from(order + fmt, buf, pos)[0] if pos + size <= len(buf) else 0
            value = old + value[1] if value[0] == "near" else value[1]
        elif isinstance(value, str):  # the last byte of the file, or all of it
            value = len(buf) - 1 if value == "offset" else len(buf)
        if e.type == 3 and e.count == 1 and not 0 <= value < 2**16:
            struct.pack_into(order + "HI", buf, e.pos + 2, 4, 1)  # becomes a LONG to hold the value
            fmt, size, pos = "I", 4, e.pos + 8
        if pos + size <= len(buf):
            struct.pack_into(order + fmt, buf, pos, value % (1 << (8 * size)) if fmt.isupper() else
                             (value + (1 << (8 * size - 1))) % (1 << (8 * size)) - (1 << (8 * size - 1)))
    elif kind == "count" and m[1] in by_tag:
        struct.pack_into(order + "I", buf, by_tag[m[1]].pos + 4, m[2])
    elif kind == "type" and m[1] in by_tag:
        struct.pack_into(order + "H", buf, by_tag[m[1]].pos + 2, m[2])
    elif kind == "retag" and entries:
        struct.pack_into(order + "H", buf, entries[m[1] % len(entries)].pos, m[2])
    elif kind == "flip" and ifd + m[1] < len(buf):
        buf[ifd + m[1]] ^= m[2]
    elif kind == "text":
        texts = [e for e in entries if e.type == 2 and e.count > 4 and e.data + e.count <= len(buf)]
        if texts:
            e = texts[m[1] % len(texts)]
            _, _, where, k, token = m
            values = [i + 1 for i in range(e.data, e.data + e.count) if buf[i] == ord("=")]
            pos = values[k % len(values)] if where == "value" and values else e.data + k % e.count
            end = pos
            while where == "value" and end < e.data + e.count and buf[end] not in b"\r\n\x00":
                end += 1
            token = token.ljust(end - pos)[: e.data + e.count - pos]
            buf[pos: pos + len(token)] = token
    elif kind == "truncate":
        return buf[: max(8, len(buf) * m[1] // 1000)]
    elif kind == "header" and len(buf) >= 8:
        struct.pack_into(order + "I", buf, 4, m[1])
    elif kind == "entries" and ifd + 2 <= len(buf):
        struct.pack_into(order + "H", buf, ifd, m[1])
    return buf


# --------------------------------------------------------------------------
# base files and the property


def write_base_files(folder: Path) -> list[Path]:
    """Small valid scans of several layouts, made from one frame of :mod:`semtile.synth`."""
    from semtile.synth import SynthConfig, write_dataset

    folder = Path(folder)
    write_dataset(folder / "synth", SynthConfig(per_label=1, labels=2, size=(96, 128), truth="linear", seed=3))
    synth = folder / "synth" / "images" / "t00_0000.tif"
    img = tifffile.imread(synth)
    fei = "[Scan]\r\nPixelWidth=1e-07\r\n[PrivateFei]\r\nDatabarHeight=24\r\n[Image]\r\nResolutionY=72\r\n"
    cmap = np.stack([np.arange(256) * 257] * 3).astype(np.uint16)
    variants = {
        "strips8-zlib": dict(data=img, rowsperstrip=8, compression="zlib"),
        "lzw-predictor": dict(data=img, compression="lzw", predictor=True),
        "tiled-zlib": dict(data=img, tile=(32, 32), compression="zlib"),
        "packbits": dict(data=img, compression="packbits", rowsperstrip=16),
        "uint16-bigendian": dict(data=img.astype(np.uint16) * 257, byteorder=">", rowsperstrip=24),
        "float32": dict(data=img.astype(np.float32) / 255, rowsperstrip=32),
        "rgb": dict(data=np.stack([img] * 3, axis=-1), photometric="rgb", rowsperstrip=16),
        "rgb-planar": dict(data=np.stack([img] * 3), photometric="rgb", planarconfig="separate"),
        "palette": dict(data=img, photometric="palette", colormap=cmap),
        "miniswhite": dict(data=255 - img, photometric="miniswhite"),
        "fei": dict(data=img, extratags=[(34682, "s", 0, fei, True)], metadata=None),
    }
    paths = [synth]
    for name, kwargs in variants.items():
        path = folder / f"{name}.tif"
        tifffile.imwrite(path, **kwargs)
        paths.append(path)
    return paths


def check_case(path: Path, *, max_pixels: int) -> tuple[str, str]:
    """Open ``path`` and compute its valid area: ``("processed", shape)`` or ``("rejected", reason class)``.

    Raises AssertionError (wrong result) or whatever else ``open_scan`` let
    escape: both are failures of the property.
    """
    claimed = header_dims(Path(path).read_bytes())
    try:
        with open_scan(path, max_pixels=max_pixels) as scan:
            valid = scan.valid().compute(scheduler="synchronous")
            info = scan.info
    except ImageError as exc:
        assert exc.path == str(path), f"the error names {exc.path}, not {path}"
        return "rejected", reason_class(exc)
    assert valid.dtype == np.float32, valid.dtype
    assert valid.shape == info.valid_shape, (valid.shape, info.valid_shape)
    assert claimed is None or info.frame_shape == claimed, (info.frame_shape, claimed)
    assert valid.size == 0 or (np.isfinite(valid).all() and valid.min() >= 0.0 and valid.max() <= 1.0)
    return "processed", f"{info.frame_shape[0]}x{info.frame_shape[1]}"


def reason_class(exc: ImageError) -> str:
    """The kind of a rejection: the error type and the reason without its details."""
    head = re.split(r"[:(]", exc.reason, maxsplit=1)[0]
    head = re.sub(r"\d+", "N", head).strip()
    if head.startswith("header claims N"):
        head = "header claims too many pixels" if type(exc).__name__ == "ImageTooLargeError" else "header claims no pixels"
    return f"{type(exc).__name__}: {head[:60]}"

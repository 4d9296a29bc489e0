"""A minimal writer of 16-bit-per-channel PNG files (Pillow cannot write 48- or 64-bit PNG)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, LA, RGB, RGBA)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def write_png16(
    path: Path,
    values: np.ndarray,
    *,
    significant_bits: int | None = None,
    exif: bytes | None = None,
) -> Path:
    """Write ``values`` ((H, W) or (H, W, 2|3|4) uint16) as a 16-bit PNG.

    Args:
        path: Where to write.
        values: The pixels, grey, grey+alpha, RGB or RGBA.
        significant_bits: When given, an sBIT chunk declares this many significant bits.
        exif: When given, an eXIf chunk with these bytes (e.g. ``Image.Exif().tobytes()``).

    Returns:
        ``path``.
    """
    height, width = values.shape[:2]
    channels = 1 if values.ndim == 2 else values.shape[2]
    header = struct.pack(">IIBBBBB", width, height, 16, _COLOUR_TYPES[channels], 0, 0, 0)
    rows = np.asarray(values, dtype=">u2").reshape(height, -1)
    pixels = b"".join(b"\0" + row.tobytes() for row in rows)  # filter type 0 on every row
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
    if significant_bits is not None:
        data += _chunk(b"sBIT", bytes([significant_bits] * channels))
    if exif is not None:
        data += _chunk(b"eXIf", exif)
    data += _chunk(b"IDAT", zlib.compress(pixels)) + _chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return Path(path)

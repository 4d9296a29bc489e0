"""Decode any image file into a square RGB uint8 array.

Every mode Pillow can open ends up as 8-bit RGB: greyscale and palette images are expanded,
transparency is composited on white, CMYK is converted, and 16-bit or float images are scaled
(never clipped) into 0..255; 16-bit ones by the smallest bit depth (8, 10, 12, 14 or 16) that
holds their brightest pixel, so 12-bit data keeps every grey level. The whole image is squashed
to ``size x size``; nothing is cropped, so an object near the border is never cut off.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from trainer.errors import DataError

# Past a factor of 3 Pillow first box-reduces, then filters: faster, visually the same.
_REDUCING_GAP = 3.0
_FILTER = Image.Resampling.BICUBIC
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_BIT_DEPTHS = (8, 10, 12, 14, 16)
# Pillow's plugins signal a bad file with many exception types, not only OSError.
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    Image.DecompressionBombError,
)


def decode_image(path: Path, size: int) -> np.ndarray:
    """Read an image file as a ``(size, size, 3)`` uint8 RGB array.

    Args:
        path: The image file.
        size: Side of the square result in pixels.

    Returns:
        The upright (EXIF orientation applied), squashed RGB image.

    Raises:
        DataError: The file is empty, truncated, corrupt or not an image.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                # Lets libjpeg decode a 4000px photo at 1/2..1/8 scale: much less work.
                img.draft("RGB", (size, size))
            upright = ImageOps.exif_transpose(img)
            return _square(to_rgb(upright), size)
    except DECODE_ERRORS as exc:
        raise DataError(
            f"{path} cannot be read as an image ({unreadable_reason(path, exc)}); remove it or "
            f"replace it with a valid image."
        ) from exc


def resize_array(rgb: np.ndarray, size: int) -> np.ndarray:
    """Squash an in-memory uint8 image (``(H, W, 3)`` or ``(H, W)``) to ``(size, size, 3)``.

    Args:
        rgb: uint8 pixels, RGB or greyscale.
        size: Side of the square result in pixels.

    Returns:
        A new ``(size, size, 3)`` uint8 array.
    """
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    return _square(image.convert("RGB"), size)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a Pillow image of any mode to 8-bit RGB (alpha composited on white)."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        return Image.fromarray(_scale_to_uint8(np.asarray(img))).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 16-bit, 32-bit or float pixels onto 0..255 without clipping.

    Floats within 0..1 are scaled by 255. Other values within 0..65535 are scaled by the full
    range of the smallest bit depth b in {8, 10, 12, 14, 16} with ``max <= 2**b - 1``: 12-bit
    sensor data (0..4095) stored in a 16-bit file keeps all 256 grey levels instead of 17, and
    4095 becomes 255. Anything else (negative, or above 65535) is stretched from min to max.
    """
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if is_float and low >= 0 and high <= 1.0:
        scale, offset = 255.0, 0.0  # floats stored as 0..1
    elif low >= 0 and high <= 65535:
        scale, offset = 255.0 / _full_scale(high), 0.0  # 8- to 16-bit data, the usual case
    else:
        scale, offset = 255.0 / max(high - low, 1e-12), low  # anything else: stretch
    scaled = (np.nan_to_num(values, nan=offset) - offset) * scale
    return np.rint(scaled).clip(0, 255).astype(np.uint8)


def _full_scale(high: float) -> int:
    """Largest value of the smallest usual bit depth that holds ``high`` (at most 16 bits)."""
    # A file does not say how many of its 16 bits the sensor filled; the brightest pixel does.
    return next(2**bits - 1 for bits in _BIT_DEPTHS if high <= 2**bits - 1)


def _square(img: Image.Image, size: int) -> np.ndarray:
    if img.size != (size, size):
        img = img.resize((size, size), _FILTER, reducing_gap=_REDUCING_GAP)
    return np.asarray(img, dtype=np.uint8).copy()


def unreadable_reason(path: Path, exc: BaseException) -> str:
    """Why Pillow could not read ``path``, in a few words (without repeating the path).

    Args:
        path: The file Pillow failed on.
        exc: The exception Pillow raised.

    Returns:
        A short lowercase phrase such as ``"the file is empty"``.
    """
    if isinstance(exc, UnidentifiedImageError):
        try:
            empty = path.stat().st_size == 0
        except OSError:
            empty = False
        return "the file is empty" if empty else "not a recognised image format"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()  # file system errors: "no such file or directory", ...
    text = str(exc).replace(str(path), "").strip(" :'\"") or type(exc).__name__
    return text.splitlines()[0]

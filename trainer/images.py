"""Decode any image file into a square RGB uint8 array.

Every mode Pillow can open ends up as 8-bit RGB: greyscale and palette images are expanded,
transparency is composited on white, CMYK is converted, and 16-bit or float images are scaled
into 0..255. 16-bit images (greyscale, and 48/64-bit colour, which Pillow would cut to its high
bytes and is therefore read with OpenCV) are scaled by the depth the file declares: a PNG sBIT
chunk (12-bit sensor data stored with ``sBIT = 12`` keeps every grey level), else 16 bits. The
scale never depends on the image's own brightest pixel, so one hot pixel cannot darken the rest.
The whole image is squashed to ``size x size``; nothing is cropped, so an object near the border
is never cut off.

`DECODER_VERSION` and `decoder_key` name the decoding; the image cache keys its files by them.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from trainer.errors import DataError

# Bump whenever the pixels decoded from a file or an array change: the image cache keys its files
# by `decoder_key`, so cached studies are decoded again instead of training on the old pixels.
DECODER_VERSION = 2

# Past a factor of 3 Pillow first box-reduces, then filters: faster, visually the same.
_REDUCING_GAP = 3.0
_FILTER = Image.Resampling.BICUBIC
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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
            deep = _is_deep_colour(img)
            wide = deep or img.mode in _WIDE_MODES
            bits = _significant_bits(path) if wide and img.format == "PNG" else None
            if deep:
                return _square(_deep_colour(path, img, bits), size)
            return _square(to_rgb(ImageOps.exif_transpose(img), bits=bits), size)
    except DECODE_ERRORS as exc:
        raise DataError(
            f"{path} cannot be read as an image ({unreadable_reason(path, exc)}); remove it or "
            f"replace it with a valid image."
        ) from exc


def decoder_key() -> str:
    """What decides the pixels decoded from a file besides the file itself, as one string.

    The decoder version, the resampling settings and Pillow's version: a cache built under
    another key holds other pixels than `decode_image` gives today.
    """
    return f"decoder{DECODER_VERSION}/{_FILTER.name}/gap{_REDUCING_GAP}/pillow{PIL.__version__}"


def resize_array(rgb: np.ndarray, size: int) -> np.ndarray:
    """Squash an in-memory image to ``(size, size, 3)`` uint8, converted as `array_to_rgb` does.

    Args:
        rgb: Pixels ``(H, W)``, ``(H, W, 1|2|3|4)`` of any integer, bool or float dtype.
        size: Side of the square result in pixels.

    Returns:
        A new ``(size, size, 3)`` uint8 array.
    """
    return _square(Image.fromarray(array_to_rgb(rgb)), size)


def array_to_rgb(values: np.ndarray) -> np.ndarray:
    """An in-memory image of any dtype as ``(H, W, 3)`` uint8 RGB, as a file would decode.

    uint16 is scaled by 65535 (as a 16-bit file without sBIT), floats within 0..1 by 255, and
    other integers as `scale_to_uint8` says; a fourth (or second) channel is alpha, composited
    on white.

    Args:
        values: ``(H, W)`` or ``(H, W, 1|2|3|4)`` pixels.

    Raises:
        ValueError: ``values`` does not have the shape of an image.
    """
    values = np.asarray(values)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[2] not in (2, 3, 4)):
        raise ValueError(f"an image must be (H, W) or (H, W, 1-4) pixels, not {values.shape}")
    pixels = np.ascontiguousarray(scale_to_uint8(values))
    if pixels.ndim == 3 and pixels.shape[2] == 2:  # grey + alpha: Pillow has no uint8 LA input
        pixels = pixels[:, :, [0, 0, 0, 1]]
    return np.asarray(to_rgb(Image.fromarray(pixels)))


def to_rgb(img: Image.Image, *, bits: int | None = None) -> Image.Image:
    """Convert a Pillow image of any mode to 8-bit RGB (alpha composited on white).

    Args:
        img: The image.
        bits: Significant bits the file declares for 16-bit pixels (None: the container's).
    """
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        return Image.fromarray(scale_to_uint8(np.asarray(img), bits=bits)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def scale_to_uint8(values: np.ndarray, *, bits: int | None = None) -> np.ndarray:
    """Map pixels of any dtype onto 0..255 by a scale their type or file declares.

    uint8 is kept; bool becomes 0 or 255. uint16 is divided by ``2**bits - 1``, where ``bits``
    is what the file declares, else 16. Wider integers declare no depth: within 0..255 they are
    8-bit, within 0..65535 16-bit. Floats within 0..1 are scaled by 255. Anything else
    (negative, or beyond 16 bits) is stretched from its minimum to its maximum, the only scale
    left to choose.

    Args:
        values: The pixels.
        bits: Significant bits the file declares (a PNG's sBIT), or None.
    """
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    wide = values.astype(np.float64)
    finite = wide[np.isfinite(wide)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if values.dtype.kind == "f" and low >= 0 and high <= 1.0:
        scale, offset = 255.0, 0.0  # floats stored as 0..1
    elif values.dtype == np.uint16 or bits is not None:
        scale, offset = 255.0 / (2 ** (bits or 16) - 1), 0.0  # the file's depth, not its maximum
    elif values.dtype.kind in "iu" and low >= 0 and high <= 65535:
        # int32/int64 declare no depth: 0..255 is 8-bit data (np.asarray(img, dtype=int)).
        scale, offset = 255.0 / (255 if high <= 255 else 65535), 0.0
    else:
        scale, offset = 255.0 / max(high - low, 1e-12), low  # anything else: stretch
    scaled = (np.nan_to_num(wide, nan=offset) - offset) * scale
    return np.rint(scaled).clip(0, 255).astype(np.uint8)


def _is_deep_colour(img: Image.Image) -> bool:
    """Whether ``img`` is colour with 16 bits per channel (Pillow would keep only 8 of them)."""
    tiles = getattr(img, "tile", None) or []
    args = tiles[0].args if tiles else None
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    return img.mode in ("RGB", "RGBA") and isinstance(rawmode, str) and ";16" in rawmode


def _deep_colour(path: Path, img: Image.Image, bits: int | None) -> Image.Image:
    """Decode a 48- or 64-bit colour file with OpenCV, which keeps all 16 bits per channel."""
    import cv2  # only these files need it; importing it costs startup time everywhere else

    pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 3:
        raise ValueError("OpenCV cannot read its 16-bit colour pixels")
    order = [2, 1, 0, 3][: pixels.shape[2]]  # OpenCV gives BGR(A)
    scaled = scale_to_uint8(np.ascontiguousarray(pixels[:, :, order]), bits=bits)
    upright = to_rgb(Image.fromarray(scaled))
    turn = _UPRIGHT.get(img.getexif().get(_ORIENTATION, 1))
    return upright.transpose(turn) if turn is not None else upright


def _significant_bits(path: Path) -> int | None:
    """The depth a PNG's sBIT chunk declares (its largest channel), or None without one."""
    with open(path, "rb") as file:
        file.seek(8)  # the PNG signature
        while len(header := file.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind == b"sBIT":
                declared = file.read(length)
                return max(declared) if declared and 0 < max(declared) <= 16 else None
            if kind in (b"IDAT", b"IEND"):  # sBIT must come before the pixels
                return None
            file.seek(length + 4, 1)  # the data and its CRC
    return None


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

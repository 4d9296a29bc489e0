"""Decoding every image mode, EXIF orientation, squashing, JPEG draft and unreadable files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from tests.support.deep_png import write_png16
from trainer.errors import DataError
from trainer.images import decode_image, resize_array

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


def _bands(width: int, height: int, colours: list[tuple[int, int, int]]) -> Image.Image:
    """Vertical bands of equal width, left to right."""
    pixels = np.zeros((height, width, 3), np.uint8)
    for k, colour in enumerate(colours):
        pixels[:, k * width // len(colours) : (k + 1) * width // len(colours)] = colour
    return Image.fromarray(pixels)


def _close(pixel: np.ndarray, colour: tuple[int, ...], tolerance: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tolerance))


def test_rgb_png_shape_dtype_and_colour(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "a.png", size=(50, 40), colour=(10, 120, 240), noise=0)

    out = decode_image(path, 32)

    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert _close(out[16, 16], (10, 120, 240), 1)
    assert out.flags.writeable


def test_non_square_image_is_squashed_not_cropped(tmp_path: Path) -> None:
    path = _save(_bands(96, 32, [RED, GREEN, BLUE]), tmp_path / "wide.png")

    out = decode_image(path, 30)

    assert _close(out[15, 2], RED) and _close(out[15, 15], GREEN) and _close(out[15, 27], BLUE)


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    # Stored 64 wide x 32 high, red left / blue right; orientation 6 means "rotate 90° clockwise
    # to display", so the upright image is 32 wide x 64 high with red on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(_bands(64, 32, [RED, BLUE]), tmp_path / "phone.jpg", exif=exif, quality=95)

    out = decode_image(path, 32)

    assert _close(out[3, 16], RED, 40) and _close(out[28, 16], BLUE, 40)
    assert _close(out[3, 3], RED, 40) and _close(out[3, 28], RED, 40)


def test_greyscale(tmp_path: Path) -> None:
    path = _save(Image.new("L", (40, 40), 100), tmp_path / "g.png")

    assert decode_image(path, 32)[5, 5].tolist() == [100, 100, 100]


def test_bilevel(tmp_path: Path) -> None:
    image = Image.new("1", (40, 40), 0)
    image.paste(1, (20, 0, 40, 40))
    out = decode_image(_save(image, tmp_path / "b.png"), 40)

    assert out[5, 5].tolist() == [0, 0, 0] and out[5, 35].tolist() == [255, 255, 255]


def test_palette_without_transparency(tmp_path: Path) -> None:
    image = _bands(40, 40, [RED, BLUE]).quantize(4)
    out = decode_image(_save(image, tmp_path / "p.png"), 40)

    assert out[5, 5].tolist() == list(RED) and out[5, 35].tolist() == list(BLUE)


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_becomes_white(tmp_path: Path, suffix: str) -> None:
    image = _bands(40, 40, [RED, BLUE]).quantize(4)
    red_index = image.getpixel((5, 5))
    out = decode_image(_save(image, tmp_path / f"t{suffix}", transparency=red_index), 40)

    assert out[5, 5].tolist() == list(WHITE) and out[5, 35].tolist() == list(BLUE)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    pixels = np.zeros((40, 40, 4), np.uint8)
    pixels[..., 0] = 200  # red everywhere, alpha decides how much shows
    pixels[:, 20:, 3] = 255
    pixels[:, :20, 3] = 0
    pixels[:10, :20, 3] = 128
    out = decode_image(_save(Image.fromarray(pixels), tmp_path / "a.png"), 40)

    assert out[20, 5].tolist() == list(WHITE)
    assert out[20, 35].tolist() == [200, 0, 0]
    assert _close(out[3, 5], (228, 127, 127), 2)  # half-transparent: halfway to white


def test_la_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("LA", (40, 40), (0, 0))
    image.paste((0, 255), (20, 0, 40, 40))
    out = decode_image(_save(image, tmp_path / "la.png"), 40)

    assert out[5, 5].tolist() == list(WHITE) and out[5, 35].tolist() == [0, 0, 0]


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk(tmp_path: Path, suffix: str) -> None:
    image = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red ink mix
    out = decode_image(_save(image, tmp_path / f"c{suffix}"), 32)

    assert _close(out[16, 16], RED, 8)


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.zeros((40, 40), np.uint16)
    values[:, :10], values[:, 10:20], values[:, 20:30], values[:, 30:] = 65535, 32768, 1000, 0
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")

    out = decode_image(path, 40)

    assert out[5, [3, 15, 25, 35], 0].tolist() == [255, 128, 4, 0]
    assert np.array_equal(out[..., 0], out[..., 2])


def test_12_bit_png_is_scaled_by_its_declared_bit_depth(tmp_path: Path) -> None:
    # A 12-bit sensor saved as 16-bit PNG with an sBIT chunk: scaled by 65535 it would keep only
    # 17 grey levels.
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    path = write_png16(tmp_path / "twelve.png", values, significant_bits=12)
    assert Image.open(path).mode.startswith("I;16")

    out = decode_image(path, 64)[..., 0]

    assert len(np.unique(out)) == 256
    assert out.flat[0] == 0 and out.flat[4095] == 255
    assert out.flat[2048] == 128  # 2048 / 4095 * 255 = 127.5, rounded


def test_48_bit_png_keeps_its_range(tmp_path: Path) -> None:
    # Pillow opens 48-bit PNG as 8-bit "RGB" (high bytes only): 12-bit data came out 0..15.
    values = np.zeros((64, 64, 3), np.uint16)
    values[..., 0] = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    values[..., 1] = 2048
    path = write_png16(tmp_path / "colour.png", values, significant_bits=12)
    assert Image.open(path).mode == "RGB"

    out = decode_image(path, 64)

    assert len(np.unique(out[..., 0])) == 256 and out[..., 0].max() == 255
    assert out[0, 0].tolist() == [0, 128, 0]


def test_48_bit_colour_decodes_like_16_bit_grey(tmp_path: Path) -> None:
    values = np.zeros((16, 16), np.uint16)
    values[:, :8], values[:, 8:] = 1000, 700
    grey = decode_image(write_png16(tmp_path / "grey.png", values), 16)
    colour = decode_image(write_png16(tmp_path / "rgb.png", np.dstack([values] * 3)), 16)

    assert np.array_equal(grey, colour)
    assert grey[0, [0, 15], 0].tolist() == [4, 3]  # 1000 and 700 of 65535


def test_48_bit_tiff_decodes_like_48_bit_png(tmp_path: Path) -> None:
    values = np.zeros((16, 16, 3), np.uint16)
    values[..., 0], values[..., 1], values[..., 2] = 60000, 1000, 30000
    tiff = tmp_path / "rgb.tif"
    assert cv2.imwrite(str(tiff), values[..., ::-1].copy())  # OpenCV writes BGR

    out = decode_image(tiff, 16)

    assert np.array_equal(out, decode_image(write_png16(tmp_path / "rgb.png", values), 16))
    assert out[3, 3].tolist() == [233, 4, 117]


def test_64_bit_rgba_png_is_composited_on_white(tmp_path: Path) -> None:
    values = np.zeros((16, 16, 4), np.uint16)
    values[..., 0], values[:, 8:, 3] = 1000, 65535

    out = decode_image(write_png16(tmp_path / "rgba.png", values), 16)

    assert out[3, 3].tolist() == list(WHITE) and out[3, 12].tolist() == [4, 0, 0]


def test_48_bit_png_exif_orientation_is_applied(tmp_path: Path) -> None:
    values = np.zeros((32, 64, 3), np.uint16)
    values[:, :32, 0], values[:, 32:, 2] = 65535, 65535  # red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write_png16(tmp_path / "turned.png", values, exif=exif.tobytes())

    out = decode_image(path, 32)

    assert _close(out[3, 16], RED) and _close(out[28, 16], BLUE)


def test_one_bright_pixel_does_not_change_the_scale(tmp_path: Path) -> None:
    # Choosing the bit depth from the image's own maximum made one hot pixel darken the rest.
    values = np.full((16, 16), 1000, np.uint16)
    plain = decode_image(write_png16(tmp_path / "plain.png", values), 16)
    values[0, 0] = 65535
    hot = decode_image(write_png16(tmp_path / "hot.png", values), 16)

    assert plain[8, 8, 0] == hot[8, 8, 0] == 4


def test_arrays_of_every_dtype_scale_like_their_8_bit_pixels() -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    expected = resize_array(pixels, 8)

    for values in (pixels.astype(np.int64), pixels.astype(np.uint16) * 257, pixels / 255.0):
        assert np.array_equal(resize_array(values, 8), expected), values.dtype
    assert np.array_equal(resize_array(pixels[..., 0].astype(np.int32), 8), expected[..., [0] * 3])


def test_32_bit_integer_out_of_16_bit_range_is_stretched(tmp_path: Path) -> None:
    values = np.zeros((40, 40), np.int32)
    values[:, 20:] = 1_000_000
    path = _save(Image.fromarray(values), tmp_path / "i.tif")

    out = decode_image(path, 40)

    assert out[5, 5].tolist() == [0, 0, 0] and out[5, 35].tolist() == [255, 255, 255]


def test_float_image_in_unit_range(tmp_path: Path) -> None:
    values = np.full((40, 40), 0.5, np.float32)
    values[:, 20:] = 1.0
    out = decode_image(_save(Image.fromarray(values), tmp_path / "f.tif"), 40)

    assert out[5, 5].tolist() == [128, 128, 128] and out[5, 35].tolist() == [255, 255, 255]


def test_big_jpeg_is_drafted_and_still_right(tmp_path: Path, monkeypatch) -> None:
    quadrants = np.zeros((1200, 1600, 3), np.uint8)
    quadrants[:600, :800], quadrants[:600, 800:] = RED, GREEN
    quadrants[600:, :800], quadrants[600:, 800:] = BLUE, WHITE
    path = _save(Image.fromarray(quadrants), tmp_path / "big.jpg", quality=90)
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append((mode, size))
        result = original(self, mode, size)
        calls.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = decode_image(path, 32)

    assert calls == [("RGB", (32, 32)), (200, 150)]  # libjpeg decoded at 1/8 scale
    expected = np.asarray(Image.fromarray(quadrants).resize((32, 32), Image.Resampling.BICUBIC))
    assert np.abs(out.astype(int) - expected).mean() < 4


def test_resize_array_rgb_and_grey() -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, 4:] = 255

    big = resize_array(rgb, 32)
    same = resize_array(rgb, 8)
    grey = resize_array(rgb[..., 0], 16)

    assert big.shape == (32, 32, 3) and big.dtype == np.uint8
    assert big[0, 0].tolist() == [0, 0, 0] and big[0, 31].tolist() == [255, 255, 255]
    assert np.array_equal(same, rgb) and same is not rgb
    assert grey.shape == (16, 16, 3) and np.array_equal(grey[..., 0], grey[..., 1])


# --- unreadable files --------------------------------------------------------------------------


def _truncated(tmp_path: Path, make_image, suffix: str) -> Path:
    path = make_image(tmp_path / f"cut{suffix}", size=(64, 64), noise=60)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _unreadable(path: Path) -> str:
    with pytest.raises(DataError) as caught:
        decode_image(path, 32)
    message = str(caught.value)
    assert message.startswith(f"{path} cannot be read as an image (")
    assert message.endswith("); remove it or replace it with a valid image.")
    return message


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")

    assert "(the file is empty)" in _unreadable(path)


def test_text_file_with_image_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n" * 20)

    assert "(not a recognised image format)" in _unreadable(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).bytes(2000))

    _unreadable(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file(tmp_path: Path, make_image, suffix: str) -> None:
    message = _unreadable(_truncated(tmp_path, make_image, suffix))

    assert "(image file is truncated" in message


def test_corrupt_png_chunk(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "bad.png", size=(48, 48), noise=60)
    data = bytearray(path.read_bytes())
    data[60:90] = bytes(30)  # zero out part of the compressed pixel data
    path.write_bytes(bytes(data))

    _unreadable(path)


def test_missing_file(tmp_path: Path) -> None:
    assert "(no such file or directory)" in _unreadable(tmp_path / "gone.png")

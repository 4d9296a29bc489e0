"""Small generated image datasets shared by the trainer tests.

``image_folder``: 3 classes (bird, cat, dog) x 8 valid images of 32-64 px in mixed formats and
modes (one per class in a nested folder), plus files that must be ignored (hidden, non-image).
``image_csv``: 24 PNGs listed in ``labels.csv`` with numeric labels 1, 2 and 10 (8 each) and
12 groups of 2 same-class images.
Each class has its own colour and brightness, so a model can learn them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASS_COLOURS = {"bird": (40, 60, 220), "cat": (220, 50, 40), "dog": (60, 170, 60)}
CSV_COLOURS = {"1": (230, 230, 40), "2": (40, 40, 40), "10": (40, 200, 220)}
# (mode, file suffix) per image index within a class; covers every common format and mode.
FOLDER_FORMATS = [
    ("RGB", ".png"),
    ("RGB", ".jpg"),
    ("L", ".png"),
    ("P", ".png"),
    ("RGBA", ".png"),
    ("RGB", ".JPEG"),
    ("RGB", ".bmp"),
    ("RGB", ".webp"),
]
MakeImage = Callable[..., Path]


def write_image(
    path: Path,
    *,
    mode: str = "RGB",
    size: tuple[int, int] = (32, 32),
    colour: tuple[int, int, int] = (128, 128, 128),
    noise: int = 12,
    **save: object,
) -> Path:
    """Write a noisy single-colour image of ``size`` (width, height) in ``mode`` to ``path``."""
    seed = int(hashlib.sha256(str(path).encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    pixels = np.asarray(colour, dtype=np.int16) + rng.integers(-noise, noise + 1, (*size[::-1], 3))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    if mode == "RGBA":
        image.putalpha(255)
    elif mode == "P":
        image = image.quantize(16)
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save)
    return path


@pytest.fixture
def make_image() -> MakeImage:
    """The `write_image` helper, for tests that need their own files."""
    return write_image


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder dataset: bird/, cat/, dog/ with 8 readable images each (24 in all)."""
    root = tmp_path / "folder_data"
    for label, colour in CLASS_COLOURS.items():
        for i, (mode, suffix) in enumerate(FOLDER_FORMATS):
            sub = "more/" if i == 7 else ""
            size = (32 + 4 * i, 64 - 4 * i)
            write_image(
                root / label / f"{sub}{label}_{i}{suffix}", mode=mode, size=size, colour=colour
            )
    write_image(root / "cat" / ".hidden.png", colour=(0, 0, 0))  # hidden: ignored
    (root / "cat" / "notes.txt").write_text("not an image")  # not an image extension: ignored
    (root / ".git").mkdir()  # hidden folder: not a class
    write_image(root / ".git" / "x.png")
    return root


@pytest.fixture
def image_csv(tmp_path: Path) -> Path:
    """A CSV dataset (path,label,group) with labels 1, 2, 10 and groups g00..g11."""
    root = tmp_path / "csv_data"
    rows = ["path,label,group"]
    for n in range(24):
        label = list(CSV_COLOURS)[n % 3]
        name = f"images/{n:02d}.png"
        write_image(root / name, size=(40, 32), colour=CSV_COLOURS[label])
        rows.append(f"{name},{label},g{(n // 6) * 3 + n % 3:02d}")
    csv = root / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv

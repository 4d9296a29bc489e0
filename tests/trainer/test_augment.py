"""Augmentation policies (shape, determinism, independence) and test-time views."""

from __future__ import annotations

import warnings

import albumentations as A
import numpy as np
import pytest
import torch

from trainer.augment import (
    POLICIES,
    SeededCompose,
    augment_batch,
    train_transform,
    tta_views,
)
from trainer.config import TTA_MODES
from trainer.errors import ConfigError


def _images(n: int, size: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("policy", POLICIES)
def test_policies_keep_shape_and_dtype_without_warnings(policy, size):
    images = _images(16, size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = augment_batch(train_transform(policy, size), images)
    assert out.shape == images.shape and out.dtype == np.uint8
    changed = np.mean([not np.array_equal(a, b) for a, b in zip(out, images, strict=True)])
    assert changed == 0.0 if policy == "none" else changed > 0.5


def test_none_policy_is_no_transform():
    assert train_transform("none", 32) is None
    images = _images(2, 8)
    out = augment_batch(None, images)
    np.testing.assert_array_equal(out, images)
    assert out is not images


def test_unknown_policy():
    with pytest.raises(ConfigError, match="augment='extreme'"):
        train_transform("extreme", 32)


def test_single_channel_images():
    images = _images(4, 32, channels=1)
    assert augment_batch(train_transform("heavy", 32), images).shape == images.shape


@pytest.mark.parametrize("policy", ["light", "medium", "heavy"])
def test_same_seed_same_output(policy):
    images = _images(16, 32)
    first, second = train_transform(policy, 32), train_transform(policy, 32, seed=99)
    first.set_random_seed(1234)
    second.set_random_seed(1234)
    a, b = augment_batch(first, images), augment_batch(second, images)
    np.testing.assert_array_equal(a, b)
    first.set_random_seed(1234)  # reseeding the same instance replays the batch
    np.testing.assert_array_equal(augment_batch(first, images), a)
    first.set_random_seed(1235)
    assert not np.array_equal(augment_batch(first, images), a)


def test_hflip_can_be_disabled():
    def has_flip(transform: A.Compose) -> bool:
        return any(isinstance(t, A.HorizontalFlip) for t in transform.transforms)

    for policy in ("light", "medium", "heavy"):
        assert has_flip(train_transform(policy, 32, hflip=True))
        assert not has_flip(train_transform(policy, 32, hflip=False))


def test_seeded_transforms_draw_independently():
    # Plain albumentations 2.0.8 seeds every child alike: both flips then always fire together.
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    transform = SeededCompose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], seed=3)
    outputs = [transform(image=image)["image"] for _ in range(400)]
    together = np.mean(
        [np.array_equal(o, image) or np.array_equal(o, image[::-1, ::-1]) for o in outputs]
    )
    assert 0.4 < together < 0.6


def test_tta_modes():
    assert set(TTA_MODES) >= {"none", "hflip", "flip4", "d4"}
    assert [len(tta_views(mode)) for mode in ("none", "hflip", "flip4", "d4")] == [1, 2, 4, 8]
    assert all(tta_views(mode)[0].name == "identity" for mode in TTA_MODES)
    with pytest.raises(ConfigError, match="tta='rot'"):
        tta_views("rot")


def test_tta_views_are_the_expected_flips():
    image = _images(1, 8)[0]
    views = {view.name: view for view in tta_views("flip4")}
    np.testing.assert_array_equal(views["identity"](image), image)
    np.testing.assert_array_equal(views["hflip"](image), image[:, ::-1])
    np.testing.assert_array_equal(views["vflip"](image), image[::-1])
    np.testing.assert_array_equal(views["rot180"](image), image[::-1, ::-1])


def test_d4_views_are_distinct_and_batched():
    batch = _images(3, 8)
    outputs = [view(batch) for view in tta_views("d4")]
    assert all(out.shape == batch.shape and out.flags.c_contiguous for out in outputs)
    assert len({out.tobytes() for out in outputs}) == 8
    for view, out in zip(tta_views("d4"), outputs, strict=True):
        np.testing.assert_array_equal(out[1], view(batch[1]))  # batch and single image agree
        torch.from_numpy(out)  # contiguous, so no negative strides


def test_tensor_views_match_array_views():
    batch = _images(2, 8)
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2)  # NCHW, as on the device
    for view in tta_views("d4"):
        expected = torch.from_numpy(view(batch)).permute(0, 3, 1, 2)
        assert torch.equal(view.on_tensor(tensor), expected), view.name

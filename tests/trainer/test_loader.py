"""Training batches: a batch dataset travels to worker processes without its pixels."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from trainer.loader import EpochBatches


def _memmapped_images(path, count: int = 400) -> np.ndarray:
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, 32, 32, 3))
    images[:] = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    del images
    return np.load(path, mmap_mode="r")


def test_pickled_batches_reopen_the_memory_map_instead_of_copying_it(tmp_path):
    images = _memmapped_images(tmp_path / "cache.npy")
    labels = np.arange(len(images)) % 10
    batches = EpochBatches(images, labels, np.arange(300), batch_size=50, transform=None, seed=1)
    payload = pickle.dumps(batches)  # what a spawn or forkserver worker receives
    assert len(payload) < images.nbytes / 50
    again = pickle.loads(payload)
    assert isinstance(again.images, np.memmap) and again.images.mode == "r"
    np.testing.assert_array_equal(again.images, images)
    for key in [(0, 0), (2, 5)]:
        assert all(torch.equal(a, b) for a, b in zip(batches[key], again[key], strict=True))


def test_in_memory_images_are_pickled_with_their_pixels():
    images = np.random.default_rng(0).integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    batches = EpochBatches(
        images, np.zeros(60), np.arange(60), batch_size=20, transform=None, seed=0
    )
    again = pickle.loads(pickle.dumps(batches))
    np.testing.assert_array_equal(again.images, images)


def test_a_slice_of_a_memory_map_is_pickled_with_its_own_pixels(tmp_path):
    images = _memmapped_images(tmp_path / "cache.npy", count=40)[10:20]
    batches = EpochBatches(
        images, np.zeros(10), np.arange(10), batch_size=5, transform=None, seed=0
    )
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(batches)).images, images)

"""Batches of cached uint8 images, augmented per epoch and normalised on the device.

The cache already holds every image decoded and resized, so per-epoch work is only gathering a
batch of arrays, applying the albumentations policy, and one batched normalisation on the
device. A worker produces whole batches (not items) so that no per-item collation happens.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """A per-batch augmentation seed that does not depend on which worker draws the batch."""
    return int(np.random.SeedSequence([seed, epoch, batch]).generate_state(1)[0])


@dataclass(frozen=True)
class _MemmapRecipe:
    """How to reopen a memory-mapped ``.npy`` read-only: what a pickled memmap carries here."""

    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    order: str

    @classmethod
    def of(cls, images: np.ndarray) -> _MemmapRecipe | None:
        """The recipe for a whole memory-mapped file, else None (then the pixels travel)."""
        # A slice of a memmap is a memmap too, but its offset attribute is its parent's; only an
        # array that maps the file itself (its base is the mmap) can be reopened from the recipe.
        whole = isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap)
        if not whole or images.filename is None:
            return None
        order = "F" if images.flags.f_contiguous and not images.flags.c_contiguous else "C"
        return cls(images.filename, images.dtype, images.shape, images.offset, order)

    def open(self) -> np.memmap:
        """The same pixels, mapped again read-only."""
        return np.memmap(
            self.path, self.dtype, mode="r", offset=self.offset, shape=self.shape, order=self.order
        )


class EpochBatches(Dataset):
    """A dataset whose items are whole training batches, keyed by ``(epoch, batch)``.

    The batch order of an epoch is a permutation seeded by ``(seed, epoch)``, computed where the
    batch is built, so persistent workers need no message from the training process.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        *,
        batch_size: int,
        transform: Any | None,
        seed: int,
    ) -> None:
        self.images, self.labels, self.indices = images, labels, np.asarray(indices)
        self.batch_size, self.transform, self.seed = batch_size, transform, seed
        # Drop a ragged last batch so BatchNorm never sees a batch of one.
        self.num_batches = max(1, len(self.indices) // batch_size)
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_batches

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies every pixel, so each spawn or forkserver worker would receive
        # the whole image cache; a mapped file travels as its path and reopens in the worker.
        state = {**self.__dict__, "_order": None}
        recipe = _MemmapRecipe.of(self.images)
        if recipe is not None:
            state["images"] = recipe
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], _MemmapRecipe):
            state = {**state, "images": state["images"].open()}
        self.__dict__.update(state)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = (epoch, rng.permutation(self.indices))
        return self._order[1]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, batch = key
        chosen = self._epoch_order(epoch)[batch * self.batch_size : (batch + 1) * self.batch_size]
        # Sorted reads are sequential on a memory map; the order inside a batch is irrelevant.
        chosen = np.sort(chosen)
        pixels = np.ascontiguousarray(self.images[chosen])
        if self.transform is not None:
            self.transform.set_random_seed(batch_seed(self.seed, epoch, batch))
            pixels = np.stack([self.transform(image=image)["image"] for image in pixels])
        return torch.from_numpy(pixels), torch.from_numpy(self.labels[chosen])


class _EpochKeys(Sampler):
    """Yields ``(epoch, batch)`` keys; the loop sets ``epoch`` before iterating."""

    def __init__(self, num_batches: int) -> None:
        self.num_batches, self.epoch = num_batches, 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, b) for b in range(self.num_batches)])


class TrainLoader:
    """Iterates the training batches of one epoch at a time.

    Args:
        batches: The batch dataset of a fold.
        num_workers: Worker processes; 0 builds batches in the training process.
        pin_memory: Pin host memory (worth it when copying to a CUDA device).
    """

    def __init__(self, batches: EpochBatches, *, num_workers: int, pin_memory: bool) -> None:
        # Parallelism comes from whole batches and worker processes. OpenCV's own thread pool
        # would oversubscribe the cores, and resizing it inside a forked worker deadlocks, so
        # it is set once here, before any worker is forked (torch already gives each worker
        # one thread).
        cv2.setNumThreads(1)
        self.keys = _EpochKeys(len(batches))
        self.loader = DataLoader(
            batches,
            sampler=self.keys,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None,
        )

    def __len__(self) -> int:
        return len(self.keys)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``: uint8 images (N, H, W, 3) and int64 labels."""
        self.keys.epoch = epoch
        return iter(self.loader)


def eval_batches(
    images: np.ndarray, indices: np.ndarray, *, batch_size: int
) -> Iterator[torch.Tensor]:
    """Un-augmented uint8 batches of ``indices``, in their given order."""
    for start in range(0, len(indices), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(images[indices[start : start + batch_size]]))


def to_model_input(
    pixels: torch.Tensor,
    *,
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    memory_format: torch.memory_format,
) -> torch.Tensor:
    """uint8 NHWC on the host -> normalised float NCHW on ``device``, in one batched op."""
    x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)
    # Change the layout while values are one byte, then one fused scale and shift:
    # (x / 255 - mean) / std == x * (1 / (255 * std)) - mean / std.
    x = x.contiguous(memory_format=memory_format).float()
    return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)


def stats_tensors(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std shaped (1, 3, 1, 1) on ``device`` for `to_model_input`."""
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # noqa: E731
    return as_tensor(mean), as_tensor(std)

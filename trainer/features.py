"""Pooled features of a frozen backbone, computed once and stored next to the image cache.

A frozen backbone is a fixed function of the image, so a head trial need not run it every
epoch of every fold. `fold_features` returns the classifier's input (timm's ``pre_logits``)
for every image: one un-augmented view, which validation uses, and with augmentation a fixed
number of augmented views, which training uses.

Each view is one ``.npy`` of float32 ``(images, features)`` named after the image cache it was
computed from (so it shares that cache's content key and is listed and cleaned with it by
``hpo cache``), the backbone, the view, and a digest over the backbone's weights (their bytes,
not the file name), its input normalisation and the timm version. Builds follow the image
cache's rules: a lock file serialises builders of one view, the file appears only through an
atomic rename, and a damaged or cut-short file is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from filelock import FileLock

from trainer.augment import train_transform
from trainer.cache import FEATURES_MARK, CachedImages, remove_leftovers
from trainer.config import TrainConfig
from trainer.device import Runtime
from trainer.loader import to_model_input

FORMAT_VERSION = 1

# Salt for the seeds of augmented views, so that they differ from the training loop's seeds.
_VIEW_SALT = 23


@dataclass(frozen=True)
class FoldFeatures:
    """Pooled features of every image of a dataset.

    Attributes:
        plain: ``(N, D)`` float32 features of the un-augmented images (for validation).
        views: ``(V, N, D)`` float32 features of ``V`` augmented views; ``V == 0`` without
            augmentation, when training uses ``plain``.
        built: Views computed for this call (0 when every view came from the cache).
    """

    plain: np.ndarray
    views: np.ndarray
    built: int

    def training(self, indices: np.ndarray) -> np.ndarray:
        """``(V, len(indices), D)`` features to train on: the augmented views, else ``plain``."""
        if len(self.views):
            return self.views[:, indices]
        return self.plain[None, indices]


def linear_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's classifier when it is one linear layer (what features can train), else None."""
    classifier = model.get_classifier()
    return classifier if isinstance(classifier, torch.nn.Linear) else None


def fold_features(
    model: torch.nn.Module,
    config: TrainConfig,
    data: CachedImages,
    runtime: Runtime,
    stats: tuple[torch.Tensor, torch.Tensor],
    *,
    batch_size: int,
    store: bool = True,
) -> FoldFeatures:
    """The plain view's and the augmented views' features of every image in ``data``.

    Args:
        model: A timm model with a linear classifier, on ``runtime.device``; its backbone's
            weights (never its classifier's) key the cache.
        config: Uses ``augment``, ``hflip`` and ``feature_views``.
        data: The images; with a ``path``, views are stored beside that image cache.
        runtime: Device, precision and memory format for the backbone.
        stats: The normalisation ``(mean, std)`` tensors of `trainer.loader.stats_tensors`.
        batch_size: Images per forward pass.
        store: Read and write the cache on disk; False computes every view in memory.

    Returns:
        The features, float32, rows in dataset order.
    """
    store_in = data.path.parent if store and data.path is not None else None
    prefix = _prefix(model, data, stats) if store_in is not None else ""
    extract = _Extractor(model, data.images, runtime, stats, batch_size)
    tags = _view_tags(config)
    built, arrays = 0, []
    for tag, transform, view in tags:
        compute = lambda t=transform, v=view: extract(t, v)  # noqa: E731
        if store_in is None:
            array, made = compute(), True
        else:
            array, made = _stored(store_in / f"{prefix}{tag}.npy", len(data), compute)
        built += made
        arrays.append(array)
    views = np.stack(arrays[1:]) if len(arrays) > 1 else np.empty((0, *arrays[0].shape), "f4")
    return FoldFeatures(arrays[0], views, built)


def _view_tags(config: TrainConfig) -> list[tuple[str, object, int]]:
    """``(name, transform or None, view index)`` of the plain view and the augmented ones."""
    tags: list[tuple[str, object, int]] = [("plain", None, 0)]
    if config.augment == "none":
        return tags
    transform = train_transform(config.augment, config.image_size, hflip=config.hflip)
    flips = "flip" if config.hflip else "noflip"
    for view in range(config.feature_views):
        tags.append((f"{config.augment}-{flips}-v{view}", transform, view))
    return tags


def _prefix(
    model: torch.nn.Module, data: CachedImages, stats: tuple[torch.Tensor, torch.Tensor]
) -> str:
    """The start of every view's file name: image cache, backbone, and a digest of both."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}/{timm.__version__}/".encode())
    digest.update(f"{data.path.name}/{data.images.shape}/{type(model).__name__}/".encode())
    for tensor in stats:
        digest.update(tensor.detach().cpu().numpy().tobytes())
    _update_with_backbone(digest, model)
    slug = re.sub(r"[^A-Za-z0-9._]+", "_", type(model).__name__)[:30]
    return f"{data.path.stem}{FEATURES_MARK}{slug}-{digest.hexdigest()[:16]}-"


def _update_with_backbone(digest: hashlib._Hash, model: torch.nn.Module) -> None:
    """Feed the name and bytes of every backbone tensor (not the classifier's) to ``digest``."""
    # The classifier is freshly initialised per fold and never changes a feature.
    skip = {id(tensor) for tensor in model.get_classifier().state_dict(keep_vars=True).values()}
    for name, tensor in model.state_dict(keep_vars=True).items():
        # BatchNorm's step counter never changes a feature; without it a full model (for
        # probe_full) and its frozen twin (for head) share their features.
        if id(tensor) in skip or name.endswith("num_batches_tracked"):
            continue
        # Contiguous first: the key must not depend on channels-last or the device.
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


def _stored(target: Path, rows: int, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """The array in ``target``, computed and written first when missing or damaged."""
    found = _load(target, rows)
    if found is not None:
        _touch(target)
        return found, False
    with FileLock(target.with_suffix(".lock")):
        found = _load(target, rows)  # another process may have built it while we waited
        if found is not None:
            return found, False
        array = compute()
        _write(target, array)
        return array, True


def _load(target: Path, rows: int) -> np.ndarray | None:
    """The stored features, or None when missing or damaged (then they are rebuilt)."""
    try:
        array = np.load(target)
    except (OSError, ValueError, EOFError):  # missing, or cut short by a crash or full disk
        return None
    if array.ndim != 2 or array.shape[0] != rows or array.dtype != np.float32:
        return None
    return array


def _write(target: Path, array: np.ndarray) -> None:
    """Write ``array`` to a temporary file, then rename it into place (atomic)."""
    # Not "*.npy": a file left by a killed builder is never taken for a cache (and is removed
    # by the next build of the same target).
    remove_leftovers(target.parent, re.escape(target.name) + r"\.\d+\.tmp")
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _touch(target: Path) -> None:
    # Its modification time is the "last use" `hpo cache` shows; a read-only cache still works.
    with contextlib.suppress(OSError):
        os.utime(target)


class _Extractor:
    """Runs the backbone (eval mode, no gradients) over every image, one view at a time."""

    def __init__(
        self,
        model: torch.nn.Module,
        images: np.ndarray,
        runtime: Runtime,
        stats: tuple[torch.Tensor, torch.Tensor],
        batch_size: int,
    ) -> None:
        self.model, self.images, self.runtime = model, images, runtime
        self.stats, self.batch_size = stats, batch_size

    @torch.inference_mode()
    def __call__(self, transform: object | None, view: int) -> np.ndarray:
        """Features of every image under ``transform`` (None: the images as they are)."""
        was_training = self.model.training
        self.model.eval()
        try:
            parts = [
                self._batch(start, transform, view)
                for start in range(0, len(self.images), self.batch_size)
            ]
        finally:
            self.model.train(was_training)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _batch(self, start: int, transform: object | None, view: int) -> np.ndarray:
        pixels = np.array(self.images[start : start + self.batch_size])  # writable, for torch
        if transform is not None:
            pixels = _augmented(transform, pixels, view, start)
        x = to_model_input(
            torch.from_numpy(pixels),
            device=self.runtime.device,
            mean=self.stats[0],
            std=self.stats[1],
            memory_format=self.runtime.memory_format,
        )
        with _autocast(self.runtime):
            pooled = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return pooled.float().reshape(len(pixels), -1).cpu().numpy()


def _augmented(transform: object, pixels: np.ndarray, view: int, start: int) -> np.ndarray:
    """Each image augmented with a seed of its own (so a view does not depend on batching)."""
    out = np.empty_like(pixels)
    for offset, image in enumerate(pixels):
        seed = np.random.SeedSequence([_VIEW_SALT, view, start + offset]).generate_state(1)[0]
        transform.set_random_seed(int(seed))
        out[offset] = transform(image=image)["image"]
    return out


def _autocast(runtime: Runtime):
    if runtime.amp_dtype is None:
        return nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.amp_dtype)

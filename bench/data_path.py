"""Data-path overhead: an epoch through hpo's real data path vs an epoch on tensors in memory.

Same model, initial weights, optimizer, batch size and number of steps everywhere; only where
the batches come from differs:

- ``memory``: pre-normalised float tensors already in memory (the floor; ratio 1 by definition);
- ``hpo loader``: the cached uint8 memmap (trainer.cache) -> EpochBatches/TrainLoader with the
  augmentation policy -> to_model_input, feeding the same bare step as ``memory``;
- ``hpo epoch``: the loop's own ``_train_epoch`` with the loader ``fit`` builds (data path plus
  the loop's step machinery);
- ``hpo loader with N worker processes``: as ``hpo loader`` but with N DataLoader workers instead
  of hpo's CPU default of 0 (evidence for that default; ``--hpo-workers``);
- ``naive PIL, N workers``: the tutorial way, a torchvision ImageFolder that decodes and resizes
  every JPEG with PIL every epoch, through a DataLoader with N workers.

Goal: hpo loader / memory and hpo epoch / memory at most 1.10. The data are generated photos
(bench/photos.py, about 500x375 JPEGs) so that decoding costs what it costs on real photos.
The first epoch of every variant is a warm-up (one-time oneDNN and allocator costs); then the
variants take turns, epoch by epoch, and the median epoch is reported.

    .venv/bin/python bench/data_path.py [--quick] [--sizes 32 64] [--policies none light]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import copy
import itertools
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets

from bench import common
from bench.photos import make_photos
from bench.reference_optuna import tutorial_transform
from trainer.augment import train_transform
from trainer.cache import CachedImages, cached_images
from trainer.config import TrainConfig
from trainer.device import Runtime, resolve_runtime, seed_everything
from trainer.loader import EpochBatches, TrainLoader, stats_tensors, to_model_input
from trainer.loop import _prepare, _train_epoch, _train_loader
from trainer.models import build_model, normalization
from trainer.optim import build_optimizer
from trainer.sources import load_table
from trainer.types import Split

GOAL = 1.10
FLOOR = "memory (pre-normalised tensors)"
Epoch = Callable[[], None]


class Bench:
    """Everything the variants of one (image size, policy) share."""

    def __init__(self, config: TrainConfig, data: CachedImages, photos: Path) -> None:
        self.config, self.data, self.photos = config, data, photos
        self.runtime: Runtime = resolve_runtime(config)
        self.indices = np.arange(len(data))
        self.steps = len(self.indices) // config.batch_size
        seed_everything(config.seed)
        self.model = build_model(config, len(data.classes))
        self.mean, self.std = normalization(self.model)
        self.epochs = itertools.count()

    def bare(self) -> common.BareLoop:
        """A bare loop on a copy of the shared initial model."""
        model = copy.deepcopy(self.model)
        return common.BareLoop(model, build_optimizer(self.config, model.parameters()))

    def model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """hpo's batched normalisation of uint8 NHWC pixels."""
        mean, std = stats_tensors(self.mean, self.std, self.runtime.device)
        return to_model_input(
            pixels,
            device=self.runtime.device,
            mean=mean,
            std=std,
            memory_format=self.runtime.memory_format,
        )


def memory_epoch(bench: Bench) -> Epoch:
    """Batches sliced from pre-normalised float tensors held in memory."""
    loop = bench.bare()
    x_all = bench.model_input(torch.from_numpy(np.array(bench.data.images)))  # a writable copy
    y_all = torch.from_numpy(np.array(bench.data.labels))
    size, rng = bench.config.batch_size, np.random.default_rng(bench.config.seed)

    def run() -> None:
        order = torch.from_numpy(rng.permutation(len(y_all)))
        chosen = [order[b * size : (b + 1) * size] for b in range(bench.steps)]
        loop.epoch((x_all[idx], y_all[idx]) for idx in chosen)

    return run


def hpo_loader_epoch(bench: Bench, workers: int | None = None) -> Epoch:
    """hpo's cached memmap, batch dataset, augmentation and normalisation; the bare step.

    ``workers`` None uses the worker count hpo picks (trainer.device); a number overrides it.
    """
    loop, config = bench.bare(), bench.config
    transform = train_transform(config.augment, config.image_size, hflip=config.hflip, seed=0)
    batches = EpochBatches(
        bench.data.images,
        bench.data.labels,
        bench.indices,
        batch_size=config.batch_size,
        transform=transform,
        seed=config.seed,
    )
    count = bench.runtime.num_workers if workers is None else workers
    loader = TrainLoader(batches, num_workers=count, pin_memory=False)

    def run() -> None:
        epoch = loader.epoch(next(bench.epochs))
        loop.epoch((bench.model_input(pixels), labels) for pixels, labels in epoch)

    return run


def hpo_fit_epoch(bench: Bench) -> Epoch:
    """What ``trainer.loop.fit`` runs per epoch for training: its loader and ``_train_epoch``."""
    split = Split(0, bench.indices, bench.indices[:0])
    fold = _prepare(bench.config, bench.data, split, bench.runtime)
    fold.model.load_state_dict(bench.model.state_dict())
    loader = _train_loader(bench.config, bench.data, split, bench.runtime)

    def run() -> None:
        epoch = next(bench.epochs)
        _train_epoch(fold, loader.epoch(epoch), bench.runtime, bench.config, epoch)

    return run


def naive_epoch(bench: Bench, workers: int) -> Epoch:
    """The tutorial loader: PIL opens and resizes every JPEG every epoch (torchvision)."""
    loop, config = bench.bare(), bench.config
    transform = tutorial_transform(
        config.image_size,
        augment=config.augment,
        hflip=config.hflip,
        mean=bench.mean,
        std=bench.std,
        train=True,
    )
    dataset = Subset(datasets.ImageFolder(bench.photos, transform=transform), bench.indices)
    loader = DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=workers
    )
    return lambda: loop.epoch(loader)


def measure(
    bench: Bench, *, hpo_workers: list[int], naive_workers: list[int], repeats: int
) -> dict[str, float]:
    """Median seconds per epoch of every variant (one warm-up epoch each, interleaved)."""
    runs = {
        FLOOR: memory_epoch(bench),
        "hpo loader (cache -> augment -> to_model_input)": hpo_loader_epoch(bench),
        "hpo epoch (fit's loader + _train_epoch)": hpo_fit_epoch(bench),
    }
    for workers in hpo_workers:
        if workers != bench.runtime.num_workers:
            runs[f"hpo loader with {workers} worker processes"] = hpo_loader_epoch(bench, workers)
    for workers in naive_workers:
        runs[f"naive PIL every epoch, {workers} workers"] = naive_epoch(bench, workers)
    times = common.interleaved(runs, warmup=1, repeats=repeats)
    return {name: common.median(values) for name, values in times.items()}


def rows_for(size: int, policy: str, medians: dict[str, float], steps: int) -> list[list]:
    """Table rows: seconds per epoch and the ratio to the in-memory floor."""
    floor = medians[FLOOR]
    rows = []
    for name, value in medians.items():
        share = common.ratio(value, floor)
        goal = ""
        if name.startswith("hpo") and "worker" not in name:  # the goal is for hpo's defaults
            goal = f"<= {GOAL:.2f}: {common.meets(share, at_most=GOAL)}"
        rows.append([size, policy, name, steps, value, share, goal])
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: print the data-path ratio table."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--policies", nargs="+", default=["none", "light"])
    p.add_argument("--backbone", default="test_resnet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--per-class", type=int, default=100, help="photos per class (5 classes)")
    p.add_argument("--repeats", type=int, default=7, help="timed epochs per variant")
    p.add_argument("--naive-workers", type=int, nargs="*", default=[0, 2])
    p.add_argument(
        "--hpo-workers",
        type=int,
        nargs="*",
        default=[1],
        help="also time hpo's loader with these worker counts (for the CPU default's choice)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.per_class, args.batch_size, args.repeats = 20, 32, 2
    threads = common.set_threads(args.threads)
    workdir = args.workdir.absolute()
    photos = make_photos(
        workdir / f"photos-5x{args.per_class}", per_class=args.per_class, n_jobs=-1
    )
    table = load_table(photos)
    common.header(
        "data path: epoch through hpo's data path / epoch on in-memory tensors",
        threads,
        [
            f"{len(table)} generated JPEGs (~500x375) in 5 classes; {args.backbone}; batch "
            f"{args.batch_size}; AdamW; median of {args.repeats} epochs after 1 warm-up epoch",
            "hpo uses num_workers from trainer.device (0 on a CPU-only machine)",
        ],
    )
    rows, builds = [], []
    for size in args.sizes:
        cache = common.fresh_dir(workdir / "data-path-cache")
        start = time.perf_counter()
        data = cached_images(table, size, directory=cache, progress=False)
        build = time.perf_counter() - start
        builds.append([size, len(table), build, len(table) / build])
        for policy in args.policies:
            config = TrainConfig(
                backbone=args.backbone,
                image_size=size,
                batch_size=args.batch_size,
                augment=policy,
                epochs=args.repeats + 2,
                device="cpu",
                threads=threads,
            )
            bench = Bench(config, data, photos)
            medians = measure(
                bench,
                hpo_workers=args.hpo_workers,
                naive_workers=args.naive_workers,
                repeats=args.repeats,
            )
            rows += rows_for(size, policy, medians, bench.steps)
    headers = ["px", "augment", "batches from", "steps", "s/epoch", "ratio", "goal"]
    common.print_table("Epoch time relative to in-memory tensors", headers, rows)
    common.print_table(
        "One-time cache build (decode + resize every JPEG once, all cores)",
        ["px", "images", "seconds", "images/s"],
        builds,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

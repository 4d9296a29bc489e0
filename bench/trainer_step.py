"""Trainer-step overhead: hpo's training epoch vs a bare PyTorch loop, both on in-memory batches.

hpo's side is the loop's own step machinery: a ``_Fold`` from ``trainer.loop._prepare`` and
``trainer.loop._train_epoch`` fed with in-memory uint8 NHWC batches, so it pays for
``to_model_input`` (normalisation), the loss bookkeeping, gradient accumulation logic and the
per-step learning-rate schedule. The bare side is
``for x, y in batches: zero_grad(); loss = crit(model(x), y); loss.backward(); opt.step()``
on the same batches already normalised to float. Same initial weights, same optimizer (built
by trainer.optim), same batches. Goal: hpo / bare at most 1.05.

    .venv/bin/python bench/trainer_step.py [--quick] [--backbones test_resnet ...]
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
from collections.abc import Callable

import numpy as np
import torch

from bench import common
from trainer.cache import CachedImages, cached_images
from trainer.config import TrainConfig
from trainer.device import resolve_runtime, seed_everything
from trainer.loader import to_model_input
from trainer.loop import _prepare, _train_epoch
from trainer.optim import build_optimizer
from trainer.sources import load_table
from trainer.types import Split

GOAL = 1.05
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def uint8_batches(data: CachedImages, *, batch_size: int, steps: int, seed: int) -> Batches:
    """``steps`` shuffled batches of cached uint8 pixels and labels, held in memory."""
    order = np.random.default_rng(seed).permutation(len(data))[: batch_size * steps]
    return [
        (
            torch.from_numpy(np.ascontiguousarray(data.images[np.sort(idx)])),
            torch.from_numpy(np.asarray(data.labels[np.sort(idx)])),
        )
        for idx in np.split(order, steps)
    ]


def compare(config: TrainConfig, data: CachedImages, batches: Batches, repeats: int) -> dict:
    """Median seconds per epoch of hpo's ``_train_epoch`` and of the bare loop."""
    runtime = resolve_runtime(config)
    seed_everything(config.seed)
    indices = np.arange(len(data))
    fold = _prepare(config, data, Split(0, indices, indices[:0]), runtime)
    model = copy.deepcopy(fold.model)  # identical initial weights for the bare loop
    bare = common.BareLoop(model, build_optimizer(config, model.parameters()))
    floats = [
        (
            to_model_input(
                x,
                device=runtime.device,
                mean=fold.mean,
                std=fold.std,
                memory_format=runtime.memory_format,
            ),
            y,
        )
        for x, y in batches
    ]
    epochs = itertools.count()

    def hpo() -> None:
        _train_epoch(fold, batches, runtime, config, next(epochs))

    runs: dict[str, Callable[[], object]] = {"bare": lambda: bare.epoch(floats), "hpo": hpo}
    times = common.interleaved(runs, warmup=1, repeats=repeats)
    return {name: common.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Command line: print the trainer-step ratio table."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--backbones",
        nargs="+",
        default=["test_resnet", "test_convnext", "test_vit", "mobilenetv3_small_050"],
    )
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="batches per epoch")
    p.add_argument("--repeats", type=int, default=7, help="timed epochs per side")
    args = p.parse_args(argv)
    if args.quick:
        args.backbones, args.steps, args.repeats = ["test_resnet"], 5, 3
    threads = common.set_threads(args.threads)
    cache = args.workdir.absolute() / "cache"
    data = cached_images(load_table("builtin:digits"), args.size, directory=cache, progress=False)
    batches = uint8_batches(data, batch_size=args.batch_size, steps=args.steps, seed=args.seed)
    common.header(
        "trainer step: hpo's _train_epoch / bare PyTorch loop, same in-memory batches",
        threads,
        [
            f"builtin:digits cached at {args.size}px; batch {args.batch_size}; {args.steps} "
            f"steps per epoch; AdamW; median of {args.repeats} epochs after 1 warm-up epoch",
            "hpo's side normalises uint8 batches itself; the bare side gets float batches",
        ],
    )
    rows = []
    for backbone in args.backbones:
        config = TrainConfig(
            backbone=backbone,
            image_size=args.size,
            batch_size=args.batch_size,
            epochs=args.repeats + 2,
            device="cpu",
            threads=threads,
            seed=args.seed,
        )
        medians = compare(config, data, batches, args.repeats)
        share = common.ratio(medians["hpo"], medians["bare"])
        per_step = {k: 1000 * v / args.steps for k, v in medians.items()}
        goal = f"<= {GOAL:.2f}: {common.meets(share, at_most=GOAL)}"
        rows.append(
            [backbone, args.size, args.batch_size, per_step["bare"], per_step["hpo"], share, goal]
        )
    headers = ["backbone", "px", "batch", "bare ms/step", "hpo ms/step", "ratio", "goal"]
    common.print_table("hpo training epoch relative to a bare loop", headers, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

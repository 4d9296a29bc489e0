"""Evaluation on the CPU: the batch size `trainer.device.eval_batch_size` picks against 256.

Every validation pass, every cached-feature build and every `hpo predict` runs models without
gradients over many images. On a GPU a large batch fills the device; on a CPU a large batch's
activations spill out of the caches. For a few backbones and image sizes this times
`trainer.loop.predict_probs` over the same images at batch 256 (the old default) and at the
picked batch, interleaved, with randomly initialised weights (no download).

    .venv/bin/python bench/eval_batch.py [--threads 1] [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import header, interleaved, median, parser, print_table, ratio, set_threads
from trainer.config import TrainConfig
from trainer.device import EVAL_BATCH_SIZE, eval_batch_size, resolve_runtime
from trainer.loader import stats_tensors
from trainer.loop import predict_probs
from trainer.models import build_model, normalization

CASES = (  # backbone, image size, images
    ("test_resnet", 32, 512),
    ("resnet10t", 32, 512),
    ("resnet10t", 64, 256),
    ("tf_efficientnet_lite0", 96, 256),
    ("resnet18", 128, 128),
    ("tf_efficientnet_lite0", 224, 64),
)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    threads = set_threads(args.threads)
    header("CPU evaluation: picked batch vs 256", threads, ["random weights; images random"])
    cases = CASES[:2] if args.quick else CASES
    rows = []
    for backbone, size, count in cases:
        config = TrainConfig(backbone=backbone, image_size=size, num_workers=0, device="cpu")
        runtime = resolve_runtime(config)
        model = build_model(config, 10).to(memory_format=runtime.memory_format)
        stats = stats_tensors(*normalization(model), runtime.device)
        images = np.random.default_rng(0).integers(0, 256, (count, size, size, 3), np.uint8)
        indices = np.arange(count)
        picked = eval_batch_size(size, runtime.device)
        run = functools.partial(predict_probs, model, images, indices, runtime, *stats)
        times = interleaved(
            {
                "256": functools.partial(run, batch_size=EVAL_BATCH_SIZE),
                "picked": functools.partial(run, batch_size=picked),
            },
            warmup=1,
            repeats=2 if args.quick else 3,
        )
        old, new = median(times["256"]), median(times["picked"])
        rows.append(
            [
                f"{backbone} {size}px",
                picked,
                1000 * old / count,
                1000 * new / count,
                ratio(old, new),
            ]
        )
    print_table(
        "ms per image, median of interleaved repeats",
        ["model", "picked batch", "at 256", "at picked", "256 / picked"],
        rows,
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()

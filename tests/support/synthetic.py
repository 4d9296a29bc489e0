"""A synthetic trainer for search tests: learning curves from a formula, no model trained.

`fake_fit` has `trainer.loop.fit`'s signature and behaviour towards its hooks (each epoch's
metrics to `after_epoch`, a reason to stop out), so the real objective, pruner, sampler and
trial loop run on it in milliseconds per trial. A config's quality depends on its backbone,
learning rate, weight decay and dropout; a low learning rate learns slowly (a slow starter);
each fold has its own difficulty and every score has noise, seeded by the config and the fold.
Above lr=0.03 the evaluation turns NaN after the first epoch, above 0.05 the loss diverges.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from trainer.config import TrainConfig
from trainer.types import Diverged, EpochMetrics, FoldResult, Split

BASE = {"test_resnet": 0.95, "test_convnext": 0.92, "test_vit": 0.88}
FOLD_EFFECT = (0.004, -0.006, 0.002, -0.003, 0.003)


def quality(config: TrainConfig) -> float:
    """The expected final fold score of ``config``."""
    q = BASE.get(config.backbone, 0.9)
    q -= 0.08 * (math.log10(config.lr) - math.log10(3e-3)) ** 2
    q -= 0.01 * abs(math.log10(max(config.weight_decay, 1e-8)) + 3.0)
    q -= 0.1 * (config.dropout - 0.1) ** 2
    return q


def _noise(config: TrainConfig, fold: int, scale: float) -> np.random.Generator:
    key = f"{config.backbone}:{config.lr:.6g}:{config.weight_decay:.6g}:{config.dropout:.4g}"
    return np.random.default_rng(zlib.crc32(f"{key}:{fold}:{scale}".encode()))


def curve(config: TrainConfig, fold: int) -> list[float]:
    """The validation score after each epoch of ``fold``."""
    final = quality(config) + FOLD_EFFECT[fold % len(FOLD_EFFECT)]
    final += _noise(config, fold, 1.0).normal(0.0, 0.004)
    # A low learning rate (or a big batch) starts slowly: it needs more of its schedule.
    tau = 0.25 * math.sqrt(3e-3 / config.lr) * math.sqrt(config.batch_size / 32)
    jitter = _noise(config, fold, 2.0).normal(0.0, 0.01, size=config.epochs)
    shape = [(1 - math.exp(-(e + 1) / config.epochs / tau)) for e in range(config.epochs)]
    return [final * s / shape[-1] + j for s, j in zip(shape, jitter, strict=True)]


def fake_fit(config: TrainConfig, data: object, split: Split, hooks=(), *args, **kwargs):
    """`trainer.loop.fit` on a synthetic curve: the hooks see every epoch; a reason stops it."""
    if config.lr > 0.05:
        raise Diverged("training loss became nan in epoch 2")
    scores = curve(config, split.fold)
    if config.lr > 0.03:  # the evaluation turns NaN from the second epoch on
        scores = [scores[0]] + [math.nan] * (len(scores) - 1)
    history, reason = [], None
    for epoch, score in enumerate(scores):
        row = EpochMetrics(split.fold, epoch, 1.0 - score, 1.0 - score, score, score, 0.0, score, 0)
        history.append(row)
        reason = next((r for r in (hook.after_epoch(row) for hook in hooks) if r), None)
        if reason:
            break
    best = max(range(len(history)), key=lambda i: np.nan_to_num(history[i].score, nan=-1.0))
    return FoldResult(
        split.fold,
        history[best].score,
        best,
        tuple(history),
        split.val,
        np.zeros((len(split.val), 10)),
        {},
        0.0,
        reason,
    )


def true_quality(params: dict, fixed: dict) -> float:
    """The expected mean score of a trial's parameters (no noise): what the search should find."""
    return quality(TrainConfig(**{**fixed, **params}))

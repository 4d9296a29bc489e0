"""The study's fixed splits: a fold id per sample, computed once and stored with the study.

Fold ``-1`` is the holdout, kept out of cross-validation entirely. Identical folds for every
trial make trials comparable fold by fold (the Wilcoxon pruner relies on it) and keep the
ensemble's out-of-fold predictions honest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainer.errors import DataError
from trainer.types import Split

# scikit-learn is imported where the splits are made: `hpo status` and `hpo --help` read a
# study through this package and must not pay a second for it.

HOLDOUT = -1


def assign_folds(
    labels: np.ndarray,
    groups: np.ndarray | None,
    classes: Sequence[str],
    *,
    folds: int,
    holdout: float,
    seed: int,
) -> np.ndarray:
    """A fold id in ``0..folds-1`` (or -1 for holdout) per sample.

    Raises:
        DataError: If a class or the groups are too few for the requested folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    fold_of = np.full(len(labels), HOLDOUT, dtype=np.int64)
    pool = np.arange(len(labels))
    if holdout > 0:
        pool = _holdout_pool(labels, groups, classes, holdout=holdout, seed=seed)
    _check_enough(labels[pool], None if groups is None else groups[pool], classes, folds)
    splitter = (
        StratifiedKFold(folds, shuffle=True, random_state=seed)
        if groups is None
        else StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    )
    pool_groups = None if groups is None else groups[pool]
    for fold, (_, val) in enumerate(splitter.split(pool, labels[pool], pool_groups)):
        fold_of[pool[val]] = fold
    return fold_of


def _holdout_pool(
    labels: np.ndarray,
    groups: np.ndarray | None,
    classes: Sequence[str],
    *,
    holdout: float,
    seed: int,
) -> np.ndarray:
    """Indices left for cross-validation after a stratified (group-aware) holdout."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    everything = np.arange(len(labels))
    if groups is None:
        _check_enough(labels, None, classes, 2, purpose="a holdout split")
        pool, _ = train_test_split(
            everything, test_size=holdout, stratify=labels, random_state=seed
        )
        return np.sort(pool)
    # The holdout is one fold of a group-aware stratified split of 1/holdout parts.
    parts = max(2, round(1 / holdout))
    _check_enough(labels, groups, classes, parts, purpose=f"holdout={holdout}")
    splitter = StratifiedGroupKFold(parts, shuffle=True, random_state=seed)
    pool, _ = next(splitter.split(everything, labels, groups))
    return np.sort(pool)


def _check_enough(
    labels: np.ndarray,
    groups: np.ndarray | None,
    classes: Sequence[str],
    folds: int,
    *,
    purpose: str | None = None,
) -> None:
    purpose = purpose or f"folds={folds}"
    counts = np.bincount(labels, minlength=len(classes))
    smallest = int(np.argmin(counts))
    if counts[smallest] < folds:
        images = "image" if counts[smallest] == 1 else "images"
        raise DataError(
            f"Class '{classes[smallest]}' has {counts[smallest]} {images} but {purpose} needs at "
            f"least {folds} per class; add images to it, remove it, or use fewer folds."
        )
    if groups is not None and len(np.unique(groups)) < folds:
        raise DataError(
            f"The data has {len(np.unique(groups))} groups but {purpose} needs at least {folds}; "
            "use fewer folds or drop the group column."
        )


def fold_splits(fold_of: np.ndarray, folds: int) -> list[Split]:
    """One `Split` per fold: train on the other folds, validate on this one."""
    pool = fold_of != HOLDOUT
    return [
        Split(fold, np.flatnonzero(pool & (fold_of != fold)), np.flatnonzero(fold_of == fold))
        for fold in range(folds)
    ]


def holdout_indices(fold_of: np.ndarray) -> np.ndarray:
    """Indices of the holdout samples (empty when the study has none)."""
    return np.flatnonzero(fold_of == HOLDOUT)

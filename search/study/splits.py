"""The study's fixed splits and holdout: a fold id per sample, computed once, stored with it.

Fold ``-1`` is the holdout, kept out of cross-validation entirely. Identical folds for every
trial make trials comparable fold by fold (the Wilcoxon pruner relies on it) and keep the
ensemble's out-of-fold predictions honest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import optuna
from optuna.storages import BaseStorage

from search import keys
from search.space.spacefile import Space
from search.study.storage import StudyPlace
from trainer.errors import DataError
from trainer.sources import ImageTable
from trainer.types import Split

# scikit-learn is imported where the splits are made: `hpo status` and `hpo --help` read a
# study through this package and must not pay a second for it.

HOLDOUT = -1
# The holdout a space leaves to the default (``holdout = None``): a tenth of data this large.
DEFAULT_HOLDOUT = 0.1
HOLDOUT_MIN_IMAGES = 1000


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


# --- the study's holdout and folds ------------------------------------------------------------


def resolve_holdout(
    storage: BaseStorage, place: StudyPlace, space: Space, table: ImageTable
) -> Space:
    """``space`` with its default ``holdout`` (None) replaced by the value the study uses.

    A stored study keeps the holdout it was created with; a new one gets `DEFAULT_HOLDOUT` when
    the data has at least `HOLDOUT_MIN_IMAGES` images, else 0. The resolved value is part of the
    identity, so the fingerprint stays that of the study.
    """
    if space.settings.holdout is not None:
        return space
    try:
        stored = storage.get_study_user_attrs(storage.get_study_id_from_name(place.name))
    except KeyError:
        stored = {}
    value = stored.get(keys.IDENTITY_ATTR, {}).get("settings", {}).get("holdout")
    value = default_holdout(len(table)) if value is None else value
    return replace(space, settings=replace(space.settings, holdout=value))


def default_holdout(images: int) -> float:
    """The holdout fraction of a new study on ``images`` images that left it to the default."""
    return DEFAULT_HOLDOUT if images >= HOLDOUT_MIN_IMAGES else 0.0


def holdout_note(space: Space, images: int) -> str | None:
    """What to tell the user when the study has no holdout (its scores are then optimistic)."""
    if space.settings.holdout:
        return None
    return (
        f"No holdout ({images} images; hpo keeps one by default from {HOLDOUT_MIN_IMAGES:,}): "
        "every score shown is cross-validated and optimistic, because the best epochs and the "
        "best trials are chosen on those same folds. For an honest score on never-seen images, "
        "set holdout = 0.1 in the space file and run it as a new study (--study NEW_NAME)."
    )


def new_folds(space: Space, table: ImageTable) -> np.ndarray:
    """The fold id of every sample for a new study of ``space`` on ``table``.

    Raises:
        DataError: A class (or the groups) is too small for the folds.
    """
    return assign_folds(
        table.labels,
        table.groups,
        table.classes,
        folds=space.settings.folds,
        holdout=_holdout(space, table),
        seed=space.settings.seed,
    )


def _holdout(space: Space, table: ImageTable) -> float:
    value = space.settings.holdout
    return default_holdout(len(table)) if value is None else value


def splits_id(fold_of: np.ndarray) -> str:
    """A short hash of the fold assignment (logged with every trial)."""
    return hashlib.sha256(np.asarray(fold_of, dtype=np.int64).tobytes()).hexdigest()[:12]


def stored_folds(study: optuna.Study) -> np.ndarray:
    """The fold id of every sample, as stored when the study was created."""
    return np.asarray(study.user_attrs[keys.FOLD_OF_ATTR], dtype=np.int64)

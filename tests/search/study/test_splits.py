"""The study's fixed splits: stratified folds and holdout that never split a group.

README promises that with a ``group`` column (a person, a patient, a camera) all images of a
group stay in one fold, and the holdout is group-aware too: a group seen in training and again
in validation (or in the holdout) would make every score optimistic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.context import RunRequest
from search.engine.run import prepare
from search.study.splits import HOLDOUT, assign_folds, fold_splits, holdout_indices, stored_folds
from trainer.errors import DataError

CLASSES = ("a", "b", "c")


def grouped_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, groups): 60 groups of 1 to 9 images, each group all of one class."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for group in range(60):
        size = int(rng.integers(1, 10))
        labels += [group % len(CLASSES)] * size
        groups += [f"person{group:02d}"] * size
    return np.array(labels), np.array(groups)


def folds_of_each_group(fold_of: np.ndarray, groups: np.ndarray) -> dict[str, set[int]]:
    return {g: set(fold_of[groups == g].tolist()) for g in np.unique(groups)}


@pytest.mark.parametrize("holdout", [0.0, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_group_spans_two_folds_or_the_holdout(holdout, seed):
    labels, groups = grouped_data(seed)
    fold_of = assign_folds(labels, groups, CLASSES, folds=4, holdout=holdout, seed=seed)
    spans = folds_of_each_group(fold_of, groups)
    assert all(len(folds) == 1 for folds in spans.values()), spans
    expected = set(range(4)) | ({HOLDOUT} if holdout else set())
    assert set(fold_of.tolist()) == expected
    for split in fold_splits(fold_of, 4):
        assert not set(groups[split.train]) & set(groups[split.val])
        assert set(labels[split.val]) == set(range(len(CLASSES)))  # still stratified
    held = holdout_indices(fold_of)
    if holdout:
        assert 0.1 < len(held) / len(labels) < 0.3
        assert not set(groups[held]) & set(groups[fold_of != HOLDOUT])
    else:
        assert len(held) == 0


def test_group_splits_are_fixed_by_the_seed():
    labels, groups = grouped_data()
    first = assign_folds(labels, groups, CLASSES, folds=4, holdout=0.2, seed=5)
    again = assign_folds(labels, groups, CLASSES, folds=4, holdout=0.2, seed=5)
    other = assign_folds(labels, groups, CLASSES, folds=4, holdout=0.2, seed=6)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_fewer_groups_than_folds_is_a_clear_error():
    labels = np.array([0, 1] * 4)
    groups = np.array(["x", "x", "x", "y", "y", "y", "z", "z"])
    with pytest.raises(DataError, match="3 groups but folds=4 needs at least 4"):
        assign_folds(labels, groups, ("a", "b"), folds=4, holdout=0.0, seed=0)


def test_a_study_on_a_csv_with_groups_keeps_each_group_in_one_fold_or_the_holdout():
    """From the CSV's group column to the splits the study stores."""
    rows = ["path,label,group"]
    for group in range(16):
        label = ("cat", "dog")[group % 2]
        for i in range(group % 3 + 1):
            path = Path("images") / f"g{group}_{i}.png"
            path.parent.mkdir(exist_ok=True)
            grey = np.full((16, 16, 3), 40 + 10 * group + i, np.uint8)
            Image.fromarray(grey).save(path)
            rows.append(f"{path},{label},patient{group}")
    Path("labels.csv").write_text("\n".join(rows) + "\n")
    Path("grouped.py").write_text(
        'data = "labels.csv"\nfolds = 3\nholdout = 0.25\nimage_size = 16\n'
        'backbone = "test_vit"\ntracking = "none"\n'
    )
    run = prepare(RunRequest(space="grouped.py", progress=False))
    fold_of = stored_folds(run.study)
    groups = np.asarray(run.table.groups)
    spans = folds_of_each_group(fold_of, groups)
    assert all(len(folds) == 1 for folds in spans.values()), spans
    assert set(fold_of.tolist()) == {HOLDOUT, 0, 1, 2}

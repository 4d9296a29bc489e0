"""Scoring an export: the ensemble, each trial it draws on, and the best fold model.

Two kinds of score, kept apart everywhere they are shown:

- **CV (optimistic)**: from the out-of-fold probabilities stored while the trials trained. Each
  fold's best epoch was picked on that fold, the trials are the best of the study, and the
  selection's weights were fitted on these same predictions, so this is biased upwards.
- **Holdout**: on images no trial ever saw (the study's holdout split); the honest estimate
  for new images, and the export's headline when the study has a holdout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from search.export.checkpoints import load_oof
from search.export.report import Row, Scores, measure
from search.export.selection import Selection, combine
from search.study.folder import trial_dir
from trainer import metrics
from trainer.inference.ensemble import Ensemble


@dataclass(frozen=True)
class CrossValidated:
    """The candidates' stored out-of-fold predictions, rows in sample order.

    Attributes:
        labels: True class of each cross-validated sample.
        probs: One ``(N, C)`` matrix per candidate trial: its fold models' out-of-fold
            probabilities together (every trial has the same folds).
        fold_scores: Per candidate, each fold model's scores on its own validation fold.
    """

    labels: np.ndarray
    probs: tuple[np.ndarray, ...]
    fold_scores: tuple[tuple[Scores, ...], ...]


def cross_validated(study_folder: Path, numbers: Sequence[int], folds: int) -> CrossValidated:
    """Read the out-of-fold files of trials ``numbers`` (see `search.export.checkpoints`)."""
    labels, probs, fold_scores = np.empty(0, np.int64), [], []
    for number in numbers:
        parts = [load_oof(trial_dir(study_folder, number), fold) for fold in range(folds)]
        order = np.argsort(np.concatenate([indices for indices, _, _ in parts]))
        labels = np.concatenate([y for _, y, _ in parts])[order]
        probs.append(np.concatenate([p for _, _, p in parts])[order])
        fold_scores.append(tuple(measure(y, p) for _, y, p in parts))
    return CrossValidated(labels, tuple(probs), tuple(fold_scores))


@dataclass(frozen=True)
class Holdout:
    """The holdout images at every member size, and their labels."""

    images: Mapping[int, np.ndarray]
    labels: np.ndarray


@dataclass(frozen=True)
class Scored:
    """Fold models scored together: who each is, and their holdout probabilities.

    Attributes:
        members: ``(trial number, fold)`` of each fold model, in ``plain``'s order.
        plain: Holdout probabilities ``(members, N, C)`` without TTA (None without holdout).
        viewed: The same with the compared TTA mode.
    """

    members: tuple[tuple[int, int], ...]
    plain: np.ndarray | None
    viewed: np.ndarray | None

    def rows_of(self, number: int) -> list[int]:
        """Positions of trial ``number``'s fold models."""
        return [i for i, (trial, _) in enumerate(self.members) if trial == number]


def compared_tta(tta: str, configs: Sequence[Mapping[str, Any]]) -> str:
    """The TTA mode whose holdout scores the report shows beside those without TTA.

    The export's own mode, else ``hflip`` when every scored model's space allows flips, else
    ``none`` (no such columns): with ``hflip = False`` (digits, text) a mirrored image means
    something else, and every TTA mode mirrors.

    Args:
        tta: The export's TTA mode.
        configs: The resolved configs of the trials scored.
    """
    if tta != "none":
        return tta
    return "hflip" if all(config.get("hflip", True) for config in configs) else "none"


def scored_members(
    ensemble: Ensemble, members: Sequence[tuple[int, int]], holdout: Holdout | None, tta: str
) -> Scored:
    """Every member's holdout probabilities, without and with ``tta`` (None without holdout)."""
    if holdout is None:
        return Scored(tuple(members), None, None)
    plain = ensemble.member_probs(holdout.images, tta="none")
    viewed = ensemble.member_probs(holdout.images, tta=tta) if tta != "none" else plain
    return Scored(tuple(members), plain, viewed)


def export_rows(
    *,
    candidates: Sequence[FrozenTrial],
    selection: Selection,
    mode: str,
    cv: CrossValidated,
    scored: Scored,
    holdout: Holdout | None,
    metric: str,
) -> tuple[Row, ...]:
    """The export first, then each trial it draws on (and the best trial), then the best fold.

    The export's holdout probabilities are each chosen trial's soft voting weighted by the
    selection, exactly what the exported `Ensemble` predicts.
    """
    labels = None if holdout is None else holdout.labels
    numbers = [t.number for t in candidates]
    weights = selection.weights
    trial_probs = {n: _trial_probs(scored, n) for n in {m for m, _ in scored.members}}
    chosen = [n for n, w in zip(numbers, weights, strict=True) if w > 0]

    def row(key: str, name: str, cv_probs: np.ndarray, probs: tuple | None) -> Row:
        return _row(key, name, measure(cv.labels, cv_probs), labels, probs)

    export_name = "selection" if mode == "select" else f"trial {numbers[0]} soft voting"
    mixed = tuple(
        None if trial_probs[chosen[0]][k] is None else _mix(trial_probs, numbers, weights, k)
        for k in (0, 1)
    )
    rows = [row("export", export_name, selection.combine(cv.probs), mixed)]
    shown = chosen if mode == "select" else []
    if numbers[0] not in shown and mode == "select":
        shown.append(numbers[0])  # the best trial is the yardstick, chosen or not
    for number in shown:
        index = numbers.index(number)
        best = " (best trial)" if index == 0 else ""
        name = f"trial {number} soft voting{best}"
        rows.append(row(f"trial{number}", name, cv.probs[index], trial_probs[number]))
    rows.append(_best_fold(scored, numbers, cv, labels, metric))
    return tuple(rows)


def _trial_probs(scored: Scored, number: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    rows = scored.rows_of(number)
    if scored.plain is None or scored.viewed is None:
        return (None, None)
    return (scored.plain[rows].mean(axis=0), scored.viewed[rows].mean(axis=0))


def _mix(
    trial_probs: Mapping[int, tuple], numbers: Sequence[int], weights: Sequence[float], k: int
) -> np.ndarray:
    present = [(w, trial_probs[n][k]) for n, w in zip(numbers, weights, strict=True) if w > 0]
    return combine([p for _, p in present], [w for w, _ in present])


def _row(
    key: str,
    name: str,
    cv: Scores,
    labels: np.ndarray | None,
    probs: tuple[np.ndarray | None, np.ndarray | None] | None,
) -> Row:
    if labels is None or probs is None or probs[0] is None or probs[1] is None:
        return Row(name, cv, None, None, key=key)
    return Row(name, cv, measure(labels, probs[0]), measure(labels, probs[1]), key=key)


def _best_fold(
    scored: Scored,
    numbers: Sequence[int],
    cv: CrossValidated,
    labels: np.ndarray | None,
    metric: str,
) -> Row:
    """The best single fold model: on the holdout when there is one, else on its own fold.

    Chosen on the holdout it is an optimistic yardstick for the ensemble to beat.
    """
    candidates = []
    for i, (number, fold) in enumerate(scored.members):
        cv_scores = cv.fold_scores[numbers.index(number)][fold]
        if labels is None or scored.plain is None or scored.viewed is None:
            candidates.append((cv_scores.get(metric), i, cv_scores, None, None))
            continue
        plain, viewed = measure(labels, scored.plain[i]), measure(labels, scored.viewed[i])
        candidates.append((plain.get(metric), i, cv_scores, plain, viewed))
    best = candidates[0]
    for candidate in candidates[1:]:
        if metrics.is_better(metric, candidate[0], best[0]):
            best = candidate
    number, fold = scored.members[best[1]]
    where = "on the holdout" if labels is not None else "on its fold"
    name = f"best fold model {where} (trial{number}-fold{fold})"
    return Row(name, best[2], best[3], best[4], key="best_fold_model")

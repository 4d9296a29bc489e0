"""Pruning on both axes of a cross-validated trial: epochs within a fold, and folds.

A trial has one step axis in Optuna, so steps are encoded in the order they happen: epoch ``e``
of fold ``f`` is reported at step ``f * 1001 + e`` and the fold's score at ``f * 1001 + 1000``.
The last step therefore always says which rule applies, and the composite pruner hands each
rule a view of the study in which only its own steps exist:

- epochs: Optuna's `PercentilePruner` (median) compares the running fold's best score so far
  with finished trials at the same fold and epoch, so a hopeless trial stops within one fold;
- folds: Optuna's `WilcoxonPruner` compares fold scores pairwise with the best trial, which
  is sound because every trial uses the same splits.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner, PercentilePruner, WilcoxonPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

MAX_EPOCHS = 1000
_STRIDE = MAX_EPOCHS + 1

Values = dict[int, float]


def epoch_step(fold: int, epoch: int) -> int:
    """The Optuna step at which epoch ``epoch`` (0-based) of fold ``fold`` is reported."""
    return fold * _STRIDE + epoch


def fold_step(fold: int) -> int:
    """The Optuna step at which the score of fold ``fold`` is reported."""
    return fold * _STRIDE + MAX_EPOCHS


def fold_values(values: Values) -> Values:
    """Only the per-fold scores, keyed by fold."""
    return {s // _STRIDE: v for s, v in values.items() if s % _STRIDE == MAX_EPOCHS}


def epoch_values(values: Values, fold: int) -> Values:
    """Only the per-epoch scores of ``fold``, keyed by epoch."""
    first = epoch_step(fold, 0)
    return {s - first: v for s, v in values.items() if first <= s < first + MAX_EPOCHS}


def _with_values(trial: FrozenTrial, values: Values) -> FrozenTrial:
    view = copy.copy(trial)
    view.intermediate_values = values
    return view


class _StudyView:
    """The parts of a `Study` that Optuna's pruners read, with steps filtered or remapped."""

    def __init__(self, study: optuna.Study, select: Callable[[Values], Values]) -> None:
        self._study, self._select = study, select

    @property
    def direction(self) -> StudyDirection:
        return self._study.direction

    @property
    def best_trial(self) -> FrozenTrial:
        best = self._study.best_trial
        return _with_values(best, self._select(best.intermediate_values))

    def get_trials(
        self, deepcopy: bool = False, states: Sequence[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=False, states=states)
        return [_with_values(t, self._select(t.intermediate_values)) for t in trials]


class CrossValidationPruner(BasePruner):
    """Epoch-level and fold-level pruning for k-fold trials; either rule may be None."""

    def __init__(self, *, epochs: BasePruner | None, folds: BasePruner | None) -> None:
        self.epochs, self.folds = epochs, folds

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        last = trial.last_step
        if last is None:
            return False
        if last % _STRIDE == MAX_EPOCHS:
            rule, select = self.folds, fold_values
        else:
            rule, select = self.epochs, lambda values: epoch_values(values, last // _STRIDE)
        if rule is None:
            return False
        view = _StudyView(study, select)
        return rule.prune(view, _with_values(trial, select(trial.intermediate_values)))


def build_pruner(
    name: str, *, startup_trials: int, warmup_epochs: int, p_threshold: float
) -> BasePruner:
    """The pruner a space's ``pruner`` setting names: median, wilcoxon or none."""
    if name == "none":
        return optuna.pruners.NopPruner()
    epochs = None
    if name == "median":
        epochs = PercentilePruner(
            50.0, n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs, n_min_trials=1
        )
    folds = WilcoxonPruner(p_threshold=p_threshold, n_startup_steps=2)
    return CrossValidationPruner(epochs=epochs, folds=folds)


def explain_epoch_prune(study: optuna.Study, fold: int, epoch: int, best: float) -> str:
    """A sentence saying why a trial was pruned at an epoch: its score against the median."""
    step = epoch_step(fold, epoch)
    peers = [
        t.intermediate_values[step]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if step in t.intermediate_values
    ]
    median = statistics.median(peers) if peers else float("nan")
    return (
        f"fold {fold} epoch {epoch + 1}: best score {best:.4f} is worse than the median "
        f"{median:.4f} of {len(peers)} finished trials at that epoch"
    )


def explain_fold_prune(study: optuna.Study, scores: Sequence[float]) -> str:
    """A sentence saying why a trial was pruned after a fold: the Wilcoxon comparison."""
    best: Any = study.best_trial
    folds = fold_values(best.intermediate_values)
    theirs = [folds.get(i, float("nan")) for i in range(len(scores))]
    mine = statistics.fmean(scores)
    return (
        f"after {len(scores)} folds: fold scores (mean {mine:.4f}) are significantly worse "
        f"than trial {best.number}'s on the same folds (mean {statistics.fmean(theirs):.4f}; "
        "Wilcoxon signed-rank test)"
    )

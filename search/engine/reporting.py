"""How a trial reports to Optuna: only at its rungs, then the study's pruner decides there."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import optuna
from optuna.study import StudyDirection

from search.study.pruning import Rungs, explain_fold_prune, explain_rung_prune


class RungReporter:
    """Reports one trial's scores at the study's rungs and asks its pruner there.

    Args:
        trial: The running trial.
        rungs: The study's rungs.
        epochs: The trial's epochs per fold (its rungs in the first fold depend on them).
        p: The fold rule's level (for the explanation).
    """

    def __init__(self, trial: optuna.Trial, rungs: Rungs, *, epochs: int, p: float) -> None:
        self.trial, self.rungs, self.epochs, self.p = trial, rungs, epochs, p
        self.epoch_steps = rungs.epoch_steps(epochs)
        self.maximize = trial.study.direction == StudyDirection.MAXIMIZE
        self.done = 0
        self.best: float | None = None
        self.reported: set[int] = set()
        # Where the trial was pruned: fold, epoch (1-based), rung (the Optuna step), score.
        self.pruned_at: dict[str, Any] | None = None

    def after_epoch(self, fold: int, epoch: int, score: float) -> str | None:
        """After epoch ``epoch`` (0-based) of ``fold``: why to prune the trial now, or None."""
        if self.done:
            return None  # epoch rungs are in the first fold only
        if self.best is None or (score > self.best if self.maximize else score < self.best):
            self.best = float(score)
        step = self.epoch_steps.get(epoch)
        if step is None or not self._ask(step, self.best):
            return None
        share = Fraction(epoch + 1, self.epochs)
        self.pruned_at = {"fold": fold, "epoch": epoch + 1, "rung": step, "score": self.best}
        at = f"fold {fold}, epoch {epoch + 1} of {self.epochs} ({share} of its schedule)"
        study = self.trial.study
        return explain_rung_prune(study, self.trial.number, step, self.best, f"{at}, best so far")

    def after_fold(self, fold: int, scores: Sequence[float]) -> str | None:
        """After a whole fold (``scores`` holds every fold so far): why to prune, or None."""
        self.done = len(scores)
        if self.done >= self.rungs.folds:
            return None
        step, mean = self.rungs.fold_step(self.done), float(statistics.fmean(scores))
        if not self._ask(step, mean):
            return None
        self.pruned_at = {"fold": fold, "epoch": None, "rung": step, "score": mean}
        study = self.trial.study
        if self.done == 1:
            return explain_rung_prune(study, self.trial.number, step, mean, f"after fold {fold}")
        return explain_fold_prune(study, scores, self.p)

    def _ask(self, step: int, value: float) -> bool:
        # A step is reported once (Optuna ignores a second report of it, e.g. after a fold is
        # retried on out-of-memory); its decision was to go on, or the trial would have ended.
        if step in self.reported:
            return False
        self.reported.add(step)
        self.trial.report(value, step)
        return self.trial.should_prune()

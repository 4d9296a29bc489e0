"""How a trial reports to Optuna: only at its rungs, then the study's pruner decides there.

When the pruner stops a trial, the reporter says why twice: in full (stored as the trial's
``pruned_reason``, shown by `hpo status STUDY --trial N`) and in a few words (``brief`` in its
``pruned_at``, for the one line `hpo run` prints per trial).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import optuna
from optuna.study import StudyDirection

from search.study.paired import compare_with_best
from search.study.pruning import (
    Rungs,
    explain_fold_prune,
    explain_rung_prune,
    peer_threshold,
    peer_values,
)


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
        # Where the trial was pruned: fold, epoch (1-based), rung (the Optuna step), score, and
        # why in a few words (brief).
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
        where = f"fold {fold}, epoch {epoch + 1}"
        brief = self._below_median(f"at {where}/{self.epochs}", step, self.best)
        self.pruned_at = {"fold": fold, "epoch": epoch + 1, "rung": step, "score": self.best}
        self.pruned_at["brief"] = brief
        share = Fraction(epoch + 1, self.epochs)
        at = f"{where} of {self.epochs} ({share} of its schedule), best so far"
        return explain_rung_prune(self.trial.study, self.trial.number, step, self.best, at)

    def after_fold(self, fold: int, scores: Sequence[float]) -> str | None:
        """After a whole fold (``scores`` holds every fold so far): why to prune, or None."""
        self.done = len(scores)
        if self.done >= self.rungs.folds:
            return None
        step, mean = self.rungs.fold_step(self.done), float(statistics.fmean(scores))
        if not self._ask(step, mean):
            return None
        brief = self._brief_after_folds(fold, scores, step)
        self.pruned_at = {"fold": fold, "epoch": None, "rung": step, "score": mean, "brief": brief}
        study = self.trial.study
        if self.done == 1:
            return explain_rung_prune(study, self.trial.number, step, mean, f"after fold {fold}")
        return explain_fold_prune(study, scores, self.p)

    def _below_median(self, at: str, step: int, score: float) -> str:
        """``pruned at fold 0, epoch 2/6: 0.7123 below the median 0.8011``."""
        study = self.trial.study
        peers = peer_values(study, self.trial.number, step)
        median = peer_threshold(peers, study.direction, 50.0) if peers else float("nan")
        side = "below" if self.maximize else "above"
        return f"pruned {at}: {score:.4f} {side} the median {median:.4f}"

    def _brief_after_folds(self, fold: int, scores: Sequence[float], step: int) -> str:
        """``pruned after 2 folds: 0.8530 vs best 0.9950 (gap > noise)``."""
        if len(scores) == 1:
            return self._below_median(f"after fold {fold}", step, scores[0])
        found = compare_with_best(self.trial.study, scores)
        if found is None:
            return f"pruned after {len(scores)} folds by the fold rule"
        return (
            f"pruned after {found.n} folds: {found.mine:.4f} vs best {found.theirs:.4f} "
            "(gap > noise)"
        )

    def _ask(self, step: int, value: float) -> bool:
        # A step is reported once (Optuna ignores a second report of it, e.g. after a fold is
        # retried on out-of-memory); its decision was to go on, or the trial would have ended.
        if step in self.reported:
            return False
        self.reported.add(step)
        self.trial.report(value, step)
        return self.trial.should_prune()

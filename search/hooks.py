"""What the hooks of a study (progress view, MLflow, checkpoints) are told, and when.

A hook overrides only the moments it cares about. Hooks observe; they never decide whether a
trial goes on (that is the pruner's job), so an error in a hook must not end a trial: each
hook is responsible for its own robustness (see `search.tracking.tracker`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from trainer.config import TrainConfig
    from trainer.types import EpochMetrics, FoldResult


class Outcome(enum.StrEnum):
    """How a study run ended in this process (or, for `hpo run --workers`, in all of them)."""

    DONE = "done"
    """The study has its target of finished trials."""
    TIMEOUT = "timeout"
    """The time was up first (``--timeout`` or the space file's ``timeout``)."""
    PATIENCE = "patience"
    """The study stopped improving (the reason is in the study user attribute ``STOPPED``)."""
    INTERRUPTED = "interrupted"
    """Ctrl-C or a termination signal."""
    FAILED = "failed"
    """An error ended it."""


class Hooks:
    """No-op base: the moments of a study, in the order they happen."""

    def trial_started(self, trial: optuna.Trial, config: TrainConfig) -> None:
        """A trial has its parameters and is about to train its first fold."""

    def epoch_ended(self, trial: optuna.Trial, row: EpochMetrics) -> None:
        """One epoch of one fold has been trained and evaluated."""

    def fold_ended(self, trial: optuna.Trial, result: FoldResult) -> None:
        """A fold is done (finished, stopped early or about to be pruned)."""

    def trial_ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial's final state is in the storage (complete, pruned or failed)."""

    def study_ended(self, study: optuna.Study, outcome: Outcome) -> None:
        """This process stops running trials; how it ended."""


class HookList(Hooks):
    """Calls every hook in order."""

    def __init__(self, hooks: Sequence[Hooks]) -> None:
        self.hooks = list(hooks)

    def trial_started(self, trial: optuna.Trial, config: TrainConfig) -> None:
        for hook in self.hooks:
            hook.trial_started(trial, config)

    def epoch_ended(self, trial: optuna.Trial, row: EpochMetrics) -> None:
        for hook in self.hooks:
            hook.epoch_ended(trial, row)

    def fold_ended(self, trial: optuna.Trial, result: FoldResult) -> None:
        for hook in self.hooks:
            hook.fold_ended(trial, result)

    def trial_ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        for hook in self.hooks:
            hook.trial_ended(study, trial)

    def study_ended(self, study: optuna.Study, outcome: Outcome) -> None:
        for hook in self.hooks:
            hook.study_ended(study, outcome)

"""The live progress view of `hpo run`: finished of target, the running trial, the best so far.

On a terminal it is a live panel; in a log (not a TTY) it prints one line per finished trial.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from search import keys
from search.hooks import Hooks
from search.study.report import format_params, make_console, summary_line

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from trainer.config import TrainConfig
    from trainer.types import EpochMetrics, FoldResult


class Progress(Hooks):
    """Shows where the study stands; a hook, so it sees every epoch of every trial."""

    def __init__(
        self, study: optuna.Study, *, target: int, folds: int, console: Console | None = None
    ) -> None:
        self.study, self.target, self.folds = study, target, folds
        self.console = console or make_console()
        self.started = time.monotonic()
        self.running = "waiting for the first trial"
        self.epochs = 0
        self.summary = summary_line(study, target)
        self.live: Live | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4)
            self.live.__enter__()
        else:
            self.console.print(f"{self.study.study_name}: {self.summary}", soft_wrap=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def _render(self) -> Group:
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self.started))
        head = Text(f"{self.study.study_name} · {self.summary} · {elapsed}", style="bold")
        return Group(head, Text(self.running))

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def trial_started(self, trial: optuna.Trial, config: TrainConfig) -> None:
        self.epochs = config.epochs
        self.running = f"trial {trial.number}: {format_params(trial.params)}"
        self._refresh()

    def epoch_ended(self, trial: optuna.Trial, row: EpochMetrics) -> None:
        self.running = (
            f"trial {trial.number}: fold {row.fold + 1}/{self.folds} epoch "
            f"{row.epoch + 1}/{self.epochs} · score {row.score:.4f} · loss {row.train_loss:.4f}"
        )
        self._refresh()

    def fold_ended(self, trial: optuna.Trial, result: FoldResult) -> None:
        self._refresh()

    def trial_ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.summary = summary_line(study, self.target)
        line = trial_line(trial)
        if self.live is not None:
            self.live.console.print(line, soft_wrap=True)
        else:
            self.console.print(f"{line}  |  {self.summary}", soft_wrap=True)
        self.running = "starting the next trial"
        self._refresh()


def trial_line(trial: FrozenTrial) -> str:
    """One line saying how a finished trial ended, with its key numbers and parameters."""
    attrs = trial.user_attrs
    folds = len(attrs.get(keys.FOLD_SCORES, []))
    epochs, seconds = attrs.get(keys.EPOCHS, 0), attrs.get(keys.SECONDS, 0)
    where = f"{folds} folds, {epochs} epochs, {seconds:.1f}s"
    if trial.state == TrialState.COMPLETE:
        outcome = f"{trial.value:.4f} ± {attrs.get(keys.SCORE_STD, 0):.4f}"
    elif trial.state == TrialState.PRUNED:
        outcome = f"pruned: {attrs.get(keys.PRUNED_REASON, '')}"
    else:
        outcome = f"failed: {attrs.get(keys.FAIL_REASON_ATTR, '')}"
    return f"trial {trial.number} {outcome} ({where}) {format_params(trial.params)}"

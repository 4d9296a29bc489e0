"""The live progress view of `hpo run`: finished of target, the running trial, the best so far.

On a terminal it is a live panel; in a log (not a TTY) it prints one line per finished trial.
Every line fits the console's width: the parameters give way first, and a pruned trial's reason
is the brief one (the full one is in its attributes and `hpo status STUDY --trial N`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from search import keys
from search.console import make_console
from search.hooks import Hooks
from search.study.tables import format_params, pruned_where, shorten, summary_line

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
            head = shorten(f"{self.study.study_name}: {self.summary}", self.console.width)
            self.console.print(head, soft_wrap=True, markup=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def _render(self) -> Group:
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self.started))
        head = Text(f"{self.study.study_name} · {self.summary} · {elapsed}", style="bold")
        return Group(head, Text(self.running, no_wrap=True, overflow="ellipsis"))

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
        if self.live is not None:
            line = trial_line(trial, width=self.live.console.width)
            self.live.console.print(line, soft_wrap=True, markup=False)
        else:
            line = trial_line(trial, width=self.console.width, suffix=f"  |  {self.summary}")
            self.console.print(line, soft_wrap=True, markup=False)
        self.running = "starting the next trial"
        self._refresh()


def trial_line(trial: FrozenTrial, *, width: int | None = None, suffix: str = "") -> str:
    """One line saying how a finished trial ended, with its key numbers and parameters.

    Args:
        trial: The finished trial.
        width: The most characters the line may have (None: no limit); the parameters are
            shortened first, then the rest.
        suffix: Text to end the line with (e.g. the study's summary in a log).
    """
    attrs = trial.user_attrs
    folds = len(attrs.get(keys.FOLD_SCORES, []))
    epochs, seconds = attrs.get(keys.EPOCHS, 0), attrs.get(keys.SECONDS, 0)
    where = f"{folds} folds, {epochs} epochs, {seconds:.1f}s"
    head = f"trial {trial.number} {_outcome(trial)} ({where})"
    params = format_params(trial.params)
    if width is None:
        return f"{head} {params}{suffix}"
    room = width - len(head) - len(suffix) - 1
    if room >= _MIN_PARAMS:
        return f"{head} {shorten(params, room)}{suffix}"
    return shorten(f"{head}{suffix}", width)


_MIN_PARAMS = 12  # narrower than this, the parameters are left out of the line


def _outcome(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        return f"{trial.value:.4f} ± {attrs.get(keys.SCORE_STD, 0):.4f}"
    if trial.state == TrialState.PRUNED:
        # The full reason is a few hundred characters; the brief one fits a line.
        return (attrs.get(keys.PRUNED_AT) or {}).get("brief") or pruned_where(trial)
    return f"failed: {attrs.get(keys.FAIL_REASON_ATTR, '')}"

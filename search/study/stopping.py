"""A study that stops by itself: ``patience_trials = N`` in a space file.

The search ends when N finished trials in a row (complete or pruned, in trial order) brought no
improvement larger than the fold standard deviation of the best trial they were measured
against: gains smaller than the noise of one fold are not worth more compute. This is the
small rule Optuna's deprecated terminator module leaves to a callback; the trial loop checks
it before each new trial, in every worker, and records why it stopped.
"""

from __future__ import annotations

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.keys import SCORE_STD, SURPLUS


def _gain(study: optuna.Study, trial: FrozenTrial, best: FrozenTrial) -> float:
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    return sign * (float(trial.value) - float(best.value))


def stagnation(study: optuna.Study, patience: int | None) -> str | None:
    """Why the search should stop now, or None to go on.

    Args:
        study: The study.
        patience: Finished trials in a row without an improvement larger than the best
            trial's fold standard deviation (None: never stop for this).
    """
    if patience is None:
        return None
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    finished = [
        t for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get(SURPLUS)
    ]
    best: FrozenTrial | None = None
    since = 0
    for trial in sorted(finished, key=lambda t: t.number):
        improved = trial.state == TrialState.COMPLETE and (
            best is None or _gain(study, trial, best) > float(best.user_attrs.get(SCORE_STD, 0))
        )
        if trial.state == TrialState.COMPLETE and (best is None or _gain(study, trial, best) > 0):
            best = trial
        since = 0 if improved else since + 1
    if best is None or since < patience:
        return None
    std = float(best.user_attrs.get(SCORE_STD, 0))
    return (
        f"the last {since} finished trials brought no improvement larger than one fold "
        f"standard deviation ({std:.4f}) over the best trial {best.number} ({best.value:.4f}); "
        f"patience_trials={patience}"
    )

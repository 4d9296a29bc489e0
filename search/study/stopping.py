"""A study that stops by itself: ``patience_trials = N`` in a space file.

The search ends when N finished trials in a row (complete or pruned, in trial order; trials
copied by ``--warm-start`` set the best to beat but do not count) brought no
improvement larger than the noise of a trial's mean score: gains smaller than chance are not
worth more compute. The noise is the fold rule's (`search.study.paired.pair_noise`): how much
two trials' scores on the same fold differ by chance, measured among the best complete trials
finished by then, over ``sqrt(folds)`` for a mean over the folds. The best trial's fold
standard deviation, used before, mostly measures how much harder one fold is than another,
which is the same for every trial on the same folds; it remains the fallback while fewer than
two complete trials have fold scores. This is the small rule Optuna's deprecated terminator
module leaves to a callback; the trial loop checks it before each new trial, in every worker,
and records why it stopped.
"""

from __future__ import annotations

import math

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.keys import FOLD_SCORES, SCORE_STD, SURPLUS, WARM_START_FROM
from search.study.paired import pair_noise_of


def _gain(study: optuna.Study, trial: FrozenTrial, best: FrozenTrial) -> float:
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    return sign * (float(trial.value) - float(best.value))


def mean_noise(done: list[FrozenTrial], best: FrozenTrial, direction: StudyDirection) -> float:
    """The chance difference between two trials' mean scores, from the complete ``done``.

    The paired fold noise of the best trials over ``sqrt(folds)``; the best trial's fold
    standard deviation while that cannot be measured.
    """
    folds = len(best.user_attrs.get(FOLD_SCORES, []))
    noise = pair_noise_of(done, direction) if folds > 1 else 0.0
    return noise / math.sqrt(folds) if noise > 0 else float(best.user_attrs.get(SCORE_STD, 0))


def stagnation(study: optuna.Study, patience: int | None) -> str | None:
    """Why the search should stop now, or None to go on.

    Args:
        study: The study.
        patience: Finished trials in a row without an improvement larger than the noise of a
            trial's mean score (None: never stop for this).
    """
    if patience is None:
        return None
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    finished = [
        t for t in study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get(SURPLUS)
    ]
    best: FrozenTrial | None = None
    done: list[FrozenTrial] = []
    since, noise = 0, 0.0
    for trial in sorted(finished, key=lambda t: t.number):
        complete = trial.state == TrialState.COMPLETE
        done += [trial] if complete else []
        if best is not None:
            noise = mean_noise(done, best, study.direction)
        improved = complete and (best is None or _gain(study, trial, best) > noise)
        if complete and (best is None or _gain(study, trial, best) > 0):
            best = trial
        # A trial copied by --warm-start sets the best to beat, but was not run by this
        # study: counting it would stop a refined search before it trained anything.
        since = 0 if improved else since + (WARM_START_FROM not in trial.user_attrs)
    if best is None or since < patience:
        return None
    return (
        f"the last {since} finished trials brought no improvement larger than the noise of a "
        f"mean score ({noise:.4f}) over the best trial {best.number} ({best.value:.4f}); "
        f"patience_trials={patience}"
    )

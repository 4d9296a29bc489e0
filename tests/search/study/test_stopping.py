"""``patience_trials``: an improvement counts when it is larger than the noise of a mean score."""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import create_trial

from search.keys import FOLD_SCORES, SCORE_STD
from search.study.stopping import stagnation

HARD_FOLDS = [0.80, 0.90, 0.85, 0.95, 0.75]  # fold std 0.071: one fold is much harder than another


def complete(study: optuna.Study, shift: float, wobble: list[float]) -> None:
    folds = [s + shift + w for s, w in zip(HARD_FOLDS, wobble, strict=True)]
    attrs = {FOLD_SCORES: folds, SCORE_STD: statistics.pstdev(folds)}
    study.add_trial(create_trial(value=statistics.fmean(folds), user_attrs=attrs))


def test_a_gain_beyond_the_paired_noise_counts_although_below_the_fold_std():
    study = optuna.create_study(direction="maximize")
    complete(study, 0.0, [0.002, -0.002, 0.001, 0.0, -0.001])
    complete(study, 0.001, [-0.001, 0.002, 0.0, -0.002, 0.001])
    complete(study, 0.02, [0.001, 0.0, -0.001, 0.002, -0.002])  # better on every fold
    # With the best trial's fold std (0.071) as the noise, the 0.02 gain did not count.
    assert stagnation(study, 1) is None
    complete(study, 0.021, [0.0, 0.001, -0.002, 0.001, 0.0])  # the same as the best
    reason = stagnation(study, 1)
    assert reason is not None and "best trial 3" in reason

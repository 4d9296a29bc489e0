"""The fold rule's measurements: a trial's fold scores against the best trial's on the same folds.

`compare_with_best` pairs a trial's first folds with the best complete trial's; `pair_noise`
measures how much two trials' scores on one fold differ by chance; `winners_luck` how much of
the best trial's lead is luck. `search.study.pruning` decides with them, and the
``patience_trials`` stop (`search.study.stopping`) measures an improvement against the same
noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.keys import FOLD_SCORES, SCORE_STD


@dataclass(frozen=True)
class Comparison:
    """A trial's first ``n`` fold scores against the best trial's on the same folds.

    Attributes:
        best: The best complete trial's number.
        n: Folds compared.
        gap: Mean of (best - mine), sign-adjusted so that positive means worse than the best.
        spread: Sample standard deviation of the paired differences (0 for one pair).
        best_std: The best trial's fold standard deviation.
        pair_noise: The standard deviation of a paired fold difference between two trials,
            pooled over the best complete trials (`pair_noise`; 0 with fewer than two).
        mine: The trial's mean over the ``n`` folds.
        theirs: The best trial's mean over the same folds.
        luck: How much of the best trial's lead is luck (`winners_luck`; 0 when unknown).
    """

    best: int
    n: int
    gap: float
    spread: float
    best_std: float
    pair_noise: float
    mine: float
    theirs: float
    luck: float = 0.0

    @property
    def excess(self) -> float:
        """The gap to the best trial with its luck taken out."""
        return self.gap - self.luck

    def bound(self, z: float) -> float:
        """The largest gap that noise explains at one-sided level ``z``."""
        return z * self.noise / math.sqrt(self.n)

    @property
    def noise(self) -> float:
        """The standard deviation of one paired fold difference that the rule assumes."""
        return max(self.spread, self.best_std, self.pair_noise)


def best_complete(study: optuna.Study) -> FrozenTrial | None:
    """The study's best complete trial, or None before any trial completed."""
    try:
        return study.best_trial
    except ValueError:
        return None


def pair_noise(study: optuna.Study, top: int = 5) -> float:
    """How much two trials' scores on the same fold differ by chance, pooled over the best.

    For every pair among the ``top`` best complete trials, the sample variance of their
    per-fold differences (their mean difference removed) measures the noise of one paired
    difference; the square root of the mean over pairs is returned (0 with fewer than two
    trials). Neither the best trial's fold standard deviation, which mostly measures how
    much harder one fold is than another (that cancels in a paired difference), nor the
    spread of a new trial's first two or three differences measures it: the first is too
    small where folds are alike, the second is itself noise.
    """
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return pair_noise_of(done, study.direction, top)


def pair_noise_of(done: Sequence[FrozenTrial], direction: StudyDirection, top: int = 5) -> float:
    """`pair_noise` over the complete trials ``done`` (e.g. those finished by some point)."""
    maximize = direction == StudyDirection.MAXIMIZE
    ranked = sorted(done, key=lambda t: float(t.value), reverse=maximize)
    folds = [scores_of(t) for t in ranked[:top]]
    variances = [
        statistics.variance([x - y for x, y in zip(a, b, strict=False)])
        for i, a in enumerate(folds)
        for b in folds[i + 1 :]
        if min(len(a), len(b)) > 1
    ]
    return math.sqrt(statistics.fmean(variances)) if variances else 0.0


def winners_luck(study: optuna.Study, noise: float, within: float = 2.0) -> float:
    """How much of the best complete trial's mean is luck, sign-adjusted (>= 0).

    The best of several alike trials is the one whose folds happened to go well, and its mean
    overstates its quality (with 20 alike trials, by about 1.9 standard errors). The trials
    alike are the complete ones whose means lie within ``within`` standard errors of a
    difference of two means (``noise / sqrt(k)`` over ``k`` folds; ``noise`` is that of a
    paired fold difference, `pair_noise`) of the best; the luck is the best's lead over their
    mean, the best compared with the mean of the top few. Trials far below could not have
    won by luck and are left out: shrinking the best toward the mean of every complete trial
    (empirical Bayes with one normal prior) took out almost none of its luck in studies where
    most trials are far worse and a few alike lead.
    """
    best = best_complete(study)
    folds = len(scores_of(best)) if best else 0
    if best is None or folds < 2 or noise <= 0:
        return 0.0
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    top = sign * float(best.value)
    near = top - within * noise / math.sqrt(folds)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    alike = [sign * float(t.value) for t in done if sign * float(t.value) >= near]
    return top - statistics.fmean(alike)


def compare_with_best(study: optuna.Study, scores: Sequence[float]) -> Comparison | None:
    """``scores`` (a trial's fold scores so far) against the best trial's, or None."""
    best = best_complete(study)
    theirs = list(best.user_attrs.get(FOLD_SCORES, [])) if best else []
    n = len(scores)
    if best is None or n == 0 or len(theirs) < n:
        return None
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    gaps = [sign * (b - m) for m, b in zip(scores, theirs, strict=False)]
    noise = pair_noise(study)
    return Comparison(
        best=best.number,
        n=n,
        gap=statistics.fmean(gaps),
        spread=statistics.stdev(gaps) if n > 1 else 0.0,
        best_std=float(best.user_attrs.get(SCORE_STD) or 0.0),
        pair_noise=noise,
        mine=statistics.fmean(scores),
        theirs=statistics.fmean(theirs[:n]),
        luck=winners_luck(study, noise),
    )


def scores_of(trial: FrozenTrial) -> list[float]:
    """A trial's fold scores so far (its stored ``fold_scores``)."""
    return list(trial.user_attrs.get(FOLD_SCORES, []))


def look_z(p: float, looks: int) -> float:
    """The one-sided bound's ``z`` at each of ``looks`` looks that spend ``p`` in all."""
    return statistics.NormalDist().inv_cdf(1.0 - p / max(looks, 1))

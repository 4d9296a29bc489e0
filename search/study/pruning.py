"""Pruning a cross-validated trial at a few rungs: fractions of the first fold, then whole folds.

A trial reports to Optuna only at its rungs, and a rung has the same step in every trial:

- step ``i`` (``i < len(fractions)``): the first fold has trained ``fractions[i]`` of its
  epochs (rounded up). Trials with 12 and with 6 epochs are compared at the same fraction of
  their schedule, not at the same epoch index. The value is the fold's best score so far.
- step ``len(fractions) + n - 1``: ``n`` folds are done (``n < folds``); the value is the mean
  of those ``n`` fold scores, so every trial at that step is measured on the same folds.

Three rules decide (see `build_pruner`):

- `PeerMedian`, at the epoch rungs and after the first fold: a trial below the median of every
  other trial that reached the same rung, complete, pruned or running, stops there. Optuna's
  `PercentilePruner`/`MedianPruner` take their reference from COMPLETE trials only, so each
  survivor raises the bar until "below the median" means "not among the best few"; Optuna's
  `SuccessiveHalvingPruner` does compare with every trial at a rung, but its rungs sit at
  geometric steps (``min_resource * eta**k``) and, while a rung has fewer than ``eta`` trials
  (or ``bootstrap_count``), it prunes every trial that is not the best so far. Hence a rule of
  our own.
- `PairedGap`, after 2 or more folds: the fold scores are compared pairwise with the best
  trial's on the same folds (every trial trains the same splits). It prunes when the mean
  paired gap, less the best trial's luck, is larger than a one-sided bound on the noise,
  ``z * s / sqrt(n)``, with ``p`` spent over all its looks: ``z`` at ``1 - p / looks`` for the
  looks after 2 .. folds - 1 folds (Bonferroni), so that a trial as good as the best is
  pruned with probability at most ``p`` in all, not ``p`` at each look. The best trial is
  the best of many: part of its lead is luck, the more so the more trials are alike, and
  its lead over the mean of the trials alike (`winners_luck`) is taken off the gap;
  with its luck left in, trials of equal quality were pruned 48% of the time at p = 0.1 over
  three looks (issue 22's simulation, tests/search/study/test_pruning_promise.py).
  ``s``, the noise of one paired fold difference, is measured where it can be: among the
  best complete trials, pair by pair (`pair_noise`); it is never less than the best trial's
  fold standard deviation or the spread of this trial's own differences (two folds that
  happen to agree must not look noise-free). With ``s`` from the new trial's two or three
  differences alone, or from the best trial's fold std (which mostly measures how much
  harder one fold is than another, and that cancels in a pair), trials as good as the best
  but for chance were pruned after two of three folds: up to half of a study's epochs went
  into trials thrown away at two thirds of their cost (bench/search_quality.py). Optuna's
  `WilcoxonPruner` (``pruner="wilcoxon"``) uses the exact signed-rank test, whose smallest
  p-value is ``2**-n``: at ``p=0.1`` it cannot act before 4 folds.
- A guard over both fold rules: a trial that has trained more than half of its folds and whose
  paired gap to the best (less the best's luck) is at most the best trial's fold standard
  deviation is never pruned.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner, NopPruner, WilcoxonPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.keys import FOLD_SCORES, SCORE_STD
from search.space.settings import StudySettings

Values = dict[int, float]
_PEERS = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclass(frozen=True)
class Rungs:
    """Where a study's trials may be pruned, and the Optuna step of each rung.

    Attributes:
        fractions: Fractions of the first fold's epochs after which the epoch rungs are.
        folds: Folds per trial; the rungs after whole folds are at 1 .. folds - 1 folds done.
    """

    fractions: tuple[float, ...]
    folds: int

    @classmethod
    def of(cls, settings: StudySettings) -> Rungs:
        """The rungs of a space's settings (``pruner_epoch_rungs`` and ``folds``)."""
        return cls(tuple(settings.pruner_epoch_rungs), settings.folds)

    def epoch_steps(self, epochs: int) -> dict[int, int]:
        """``{epoch index (0-based): step}`` of the first fold for a schedule of ``epochs``.

        A fraction that falls on the fold's last epoch is left out (the fold's end is a rung
        of its own), and two fractions that fall on the same epoch make one rung.
        """
        steps: dict[int, int] = {}
        for step, fraction in enumerate(self.fractions):
            epoch = max(math.ceil(fraction * epochs), 1) - 1
            if epoch < epochs - 1:
                steps.setdefault(epoch, step)
        return steps

    def fold_step(self, done: int) -> int:
        """The step at which a trial with ``done`` folds trained reports their mean."""
        return len(self.fractions) + done - 1

    def folds_done(self, step: int) -> int:
        """How many whole folds a trial has trained at ``step`` (0 at an epoch rung)."""
        return max(step - len(self.fractions) + 1, 0)


def _worse(a: float, b: float, direction: StudyDirection) -> bool:
    return a < b if direction == StudyDirection.MAXIMIZE else a > b


# --- the rule at a rung: the median of every trial that reached it ------------------------------


def peer_values(study: optuna.Study, number: int, step: int) -> list[float]:
    """The values at ``step`` of every other trial that reached it, whatever its state."""
    values = []
    for t in study.get_trials(deepcopy=False, states=_PEERS):
        value = t.intermediate_values.get(step)
        if t.number != number and value is not None and math.isfinite(value):
            values.append(value)
    return values


def peer_threshold(values: Sequence[float], direction: StudyDirection, percentile: float) -> float:
    """The value below which (above, when minimising) the worst ``percentile`` % lie."""
    q = percentile if direction == StudyDirection.MAXIMIZE else 100.0 - percentile
    return float(np.percentile(values, q))


class PeerMedian(BasePruner):
    """Prunes a trial worse than the median of all other trials at the same rung.

    Args:
        min_peers: Other trials that must have reached the rung before it prunes there.
        percentile: The share of trials (in %) below which a trial is pruned; 50 is the median.
    """

    def __init__(self, *, min_peers: int, percentile: float = 50.0) -> None:
        self.min_peers, self.percentile = min_peers, percentile

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        peers = peer_values(study, trial.number, step)
        if len(peers) < self.min_peers:
            return False
        threshold = peer_threshold(peers, study.direction, self.percentile)
        return _worse(trial.intermediate_values[step], threshold, study.direction)


# --- the rule after folds: a paired comparison with the best trial ------------------------------


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
    folds = [_scores(t) for t in ranked[:top]]
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
    folds = len(_scores(best)) if best else 0
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


def _scores(trial: FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get(FOLD_SCORES, []))


def look_z(p: float, looks: int) -> float:
    """The one-sided bound's ``z`` at each of ``looks`` looks that spend ``p`` in all."""
    return statistics.NormalDist().inv_cdf(1.0 - p / max(looks, 1))


class PairedGap(BasePruner):
    """Prunes after ``min_folds`` or more folds when the paired gap to the best exceeds the noise.

    Args:
        p: One-sided level over all looks: a trial as good as the best is pruned at one of
            them with probability at most ``p``.
        looks: Looks the rule takes at a trial (after ``min_folds`` .. folds - 1 folds).
        min_folds: Folds a trial must have trained before this rule looks at it.
    """

    def __init__(self, *, p: float, looks: int = 1, min_folds: int = 2) -> None:
        self.z, self.looks = look_z(p, looks), max(looks, 1)
        self.min_folds = min_folds

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        scores = _scores(trial)
        found = compare_with_best(study, scores) if len(scores) >= self.min_folds else None
        return found is not None and found.excess > found.bound(self.z)


# --- the composite ------------------------------------------------------------------------------


def _with_values(trial: FrozenTrial, values: Values) -> FrozenTrial:
    view = copy.copy(trial)
    view.intermediate_values = values
    return view


def _fold_values(trial: FrozenTrial) -> Values:
    return dict(enumerate(_scores(trial)))


class _FoldView:
    """The parts of a `Study` that Optuna's `WilcoxonPruner` reads, with fold scores as steps."""

    def __init__(self, study: optuna.Study, select: Callable[[FrozenTrial], Values]) -> None:
        self._study, self._select = study, select

    @property
    def direction(self) -> StudyDirection:
        return self._study.direction

    @property
    def best_trial(self) -> FrozenTrial:
        best = self._study.best_trial
        return _with_values(best, self._select(best))

    def get_trials(
        self, deepcopy: bool = False, states: Sequence[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=False, states=states)
        return [_with_values(t, self._select(t)) for t in trials]


class FoldWilcoxon(BasePruner):
    """Optuna's `WilcoxonPruner` over the fold scores (one "instance" per fold)."""

    def __init__(self, *, p: float) -> None:
        self.inner = WilcoxonPruner(p_threshold=p, n_startup_steps=2)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if best_complete(study) is None:
            return False
        view: Any = _FoldView(study, _fold_values)
        return self.inner.prune(view, _with_values(trial, _fold_values(trial)))


class CrossValidationPruner(BasePruner):
    """The rung rule up to the first fold's end, the fold rule after, and the guard.

    Args:
        rungs: The study's rungs.
        peers: The rule at the epoch rungs and after the first fold (None: no pruning there).
        folds: The rule after two or more folds (None: no pruning there).
    """

    def __init__(self, rungs: Rungs, *, peers: BasePruner | None, folds: BasePruner | None):
        self.rungs, self.peers, self.folds = rungs, peers, folds

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        if not math.isfinite(trial.intermediate_values[step]):
            return True
        done = self.rungs.folds_done(step)
        if done <= 1:
            return self.peers is not None and self.peers.prune(study, trial)
        if self.folds is None or self.protected(study, _scores(trial)):
            return False
        return self.folds.prune(study, trial)

    def protected(self, study: optuna.Study, scores: Sequence[float]) -> bool:
        """Nearly finished and within one fold standard deviation of the best: keep it."""
        found = compare_with_best(study, scores)
        if found is None:
            return False
        return 2 * found.n > self.rungs.folds and found.excess <= found.best_std


def build_pruner(name: str, *, rungs: Rungs, min_peers: int, p: float) -> BasePruner:
    """The pruner a space's ``pruner`` setting names.

    Args:
        name: ``median`` (rung median, then the paired gap), ``wilcoxon`` (Optuna's Wilcoxon
            test over folds only) or ``none``.
        rungs: The study's rungs.
        min_peers: Trials that must have reached a rung before the rung median prunes there.
        p: The one-sided level of the fold rule.
    """
    if name == "none":
        return NopPruner()
    if name == "wilcoxon":
        return CrossValidationPruner(rungs, peers=None, folds=FoldWilcoxon(p=p))
    if name == "median":
        looks = rungs.folds - 2  # after 2 .. folds - 1 folds
        return CrossValidationPruner(
            rungs, peers=PeerMedian(min_peers=min_peers), folds=PairedGap(p=p, looks=looks)
        )
    raise ValueError(f"unknown pruner {name!r}")


# --- why a trial was pruned, in words -----------------------------------------------------------


def explain_rung_prune(study: optuna.Study, number: int, step: int, value: float, at: str) -> str:
    """Why a trial was pruned at a rung up to the first fold's end: its value against the median.

    Args:
        study: The study.
        number: The pruned trial's number (left out of its peers).
        step: The rung's step.
        value: The trial's value there (the fold's best score so far, or the fold's score).
        at: Where that is, e.g. ``fold 0, epoch 2 (1/3 of its epochs)``.
    """
    peers = peer_values(study, number, step)
    median = peer_threshold(peers, study.direction, 50.0) if peers else float("nan")
    side = "below" if study.direction == StudyDirection.MAXIMIZE else "above"
    return (
        f"{at}: score {value:.4f} is {side} the median {median:.4f} of the {len(peers)} "
        "other trials (complete and pruned) that reached the same point"
    )


def explain_fold_prune(study: optuna.Study, scores: Sequence[float], p: float) -> str:
    """Why a trial was pruned after whole folds: its paired comparison with the best trial."""
    found = compare_with_best(study, scores)
    if found is None:
        return f"after {len(scores)} folds: pruned by the fold rule"
    pruner = getattr(study.pruner, "folds", None)
    head = (
        f"after {found.n} folds: mean {found.mine:.4f} against {found.theirs:.4f} for the best "
        f"trial {found.best} on the same folds"
    )
    if isinstance(pruner, FoldWilcoxon):
        return f"{head}; worse by Wilcoxon's signed-rank test (one-sided p < {p})"
    looks = pruner.looks if isinstance(pruner, PairedGap) else 1
    return (
        f"{head}; gap {found.gap:.4f} less the best's luck {found.luck:.4f} exceeds what noise "
        f"explains, {found.bound(look_z(p, looks)):.4f} (p={p} over {looks} looks, noise "
        f"{found.noise:.4f} per fold)"
    )

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
  its lead over the mean of the trials alike (`search.study.paired.winners_luck`) is taken
  off the gap; with its luck left in, trials of equal quality were pruned 48% of the time at
  p = 0.1 over three looks (issue 22's simulation, tests/search/study/test_pruning_promise.py).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.pruners import BasePruner, NopPruner, WilcoxonPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.space.settings import StudySettings
from search.study.paired import best_complete, compare_with_best, look_z, scores_of

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
        scores = scores_of(trial)
        found = compare_with_best(study, scores) if len(scores) >= self.min_folds else None
        return found is not None and found.excess > found.bound(self.z)


# --- the composite ------------------------------------------------------------------------------


def _with_values(trial: FrozenTrial, values: Values) -> FrozenTrial:
    view = copy.copy(trial)
    view.intermediate_values = values
    return view


def _fold_values(trial: FrozenTrial) -> Values:
    return dict(enumerate(scores_of(trial)))


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
        if self.folds is None or self.protected(study, scores_of(trial)):
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

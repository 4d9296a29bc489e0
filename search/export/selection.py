"""Caruana's ensemble selection: which trials an export combines, and with which weights.

Ensemble selection (Caruana et al., ICML 2004) grows an ensemble one model at a time, each time
adding (with replacement) the model that most improves the ensemble's score on held-out
predictions; the ensemble kept is the best one seen, and a model's weight is how often it was
added. hpo selects among trials: every trial trained on the study's fixed folds, so its fold
models' out-of-fold probabilities form one prediction for every cross-validated image, and the
average of several trials' matrices is the out-of-fold prediction of their combined fold models.

This module is pure: probabilities in, counts out. It never sees the holdout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer import metrics

ROUNDS = 20
"""Additions tried by default; the best prefix is kept, so more rounds never score worse."""


@dataclass(frozen=True)
class Selection:
    """The chosen combination of candidates.

    Attributes:
        counts: How often each candidate was added, in the candidates' order (0: not chosen).
        score: The study metric of the weighted combination on the data it was chosen on.
        scores: The score after each addition (the history the best prefix was taken from).
    """

    counts: tuple[int, ...]
    score: float
    scores: tuple[float, ...]

    @property
    def weights(self) -> tuple[float, ...]:
        """Each candidate's share of the combination (counts over their sum)."""
        total = sum(self.counts)
        return tuple(count / total for count in self.counts)

    def combine(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        """The weighted mean of ``probs`` (one ``(N, C)`` matrix per candidate)."""
        return combine(probs, self.weights)


def combine(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum(w * p)`` over the candidates with a weight above 0, as float64."""
    total = np.zeros_like(np.asarray(probs[0]), dtype=np.float64)
    for weight, p in zip(weights, probs, strict=True):
        if weight > 0:
            total += weight * np.asarray(p, dtype=np.float64)
    return total


def select(
    probs: Sequence[np.ndarray], labels: np.ndarray, metric: str, *, rounds: int = ROUNDS
) -> Selection:
    """Greedy forward selection with replacement, maximising ``metric`` on ``probs``.

    Each round adds the candidate whose addition gives the best score (ties: the better log
    loss, then the earlier candidate, so list them best first). The first round therefore picks
    the best single candidate, and the result is the best of all rounds (the earliest on a tie):
    it is never worse than the best single candidate on these predictions.

    Args:
        probs: One ``(N, C)`` probability matrix per candidate, rows in the order of ``labels``.
        labels: The true class of each row.
        metric: A metric of `trainer.metrics.DIRECTIONS` (``log_loss`` is minimised).
        rounds: How many additions to try.

    Raises:
        ValueError: No candidate, or ``rounds`` below 1.
    """
    if not probs or rounds < 1:
        raise ValueError("ensemble selection needs at least one candidate and one round")
    candidates = [np.asarray(p, dtype=np.float64) for p in probs]
    total = np.zeros_like(candidates[0])
    counts = [0] * len(candidates)
    best: tuple[tuple[float, ...], tuple[int, ...], float] | None = None
    history = []
    for added in range(1, rounds + 1):
        keyed = [_key(metric, labels, (total + p) / added) for p in candidates]
        # max() keeps the first of equal keys: the earlier (better-ranked) candidate.
        pick = max(range(len(candidates)), key=lambda i: keyed[i])
        total += candidates[pick]
        counts[pick] += 1
        score = metrics.score(metric, labels, total / added)
        history.append(score)
        if best is None or keyed[pick] > best[0]:
            best = (keyed[pick], tuple(counts), score)
    assert best is not None
    return Selection(counts=best[1], score=best[2], scores=tuple(history))


def _key(metric: str, labels: np.ndarray, probs: np.ndarray) -> tuple[float, ...]:
    """A larger-is-better key: the metric, then (for label metrics) the negated log loss.

    Accuracy and F1 change in steps, so many additions tie; the log loss breaks those ties in
    favour of the better-calibrated combination instead of an arbitrary one.
    """
    # Rounded: an addition that changes a score only by float rounding is no improvement.
    loss = -round(metrics.log_loss(labels, probs), 10)
    if metric == "log_loss":
        return (loss,)
    sign = 1.0 if metrics.DIRECTIONS[metric] == "maximize" else -1.0
    return (round(sign * metrics.score(metric, labels, probs), 10), loss)

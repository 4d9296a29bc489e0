"""Caruana ensemble selection on hand-made out-of-fold probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from search.export.selection import combine, select
from trainer import metrics


def _onehot(labels: np.ndarray, classes: int, confidence: float) -> np.ndarray:
    probs = np.full((len(labels), classes), (1 - confidence) / (classes - 1))
    probs[np.arange(len(labels)), labels] = confidence
    return probs


def _complementary() -> tuple[np.ndarray, list[np.ndarray]]:
    """Two trials each sure and right on one half, mildly wrong on the other; a weak third."""
    labels = np.tile([0, 1, 2], 20)
    half = np.arange(len(labels)) < len(labels) // 2
    wrong = (labels + 1) % 3
    sure, unsure = _onehot(labels, 3, 0.9), _onehot(wrong, 3, 0.45)
    first = np.where(half[:, None], sure, unsure)
    second = np.where(half[:, None], unsure, sure)
    weak = _onehot(wrong, 3, 0.6)
    return labels, [first, second, weak]


def test_one_candidate_is_selected_once():
    labels, probs = _complementary()
    chosen = select(probs[:1], labels, "accuracy")
    assert chosen.counts == (1,)
    assert chosen.weights == (1.0,)
    assert chosen.score == pytest.approx(metrics.accuracy(labels, probs[0].argmax(1)))


def test_complementary_trials_are_combined_and_beat_each_alone():
    labels, probs = _complementary()
    singles = [metrics.f1_macro(labels, p.argmax(1)) for p in probs]

    chosen = select(probs, labels, "f1_macro")

    assert max(singles) == pytest.approx(0.5, abs=0.01)
    assert chosen.score == 1.0
    assert chosen.counts[0] == chosen.counts[1] and chosen.counts[2] == 0


def test_a_trial_that_only_hurts_is_never_added():
    labels, probs = _complementary()
    strong = _onehot(labels, 3, 0.8)
    chosen = select([strong, probs[2]], labels, "accuracy")
    assert chosen.counts == (1, 0) and chosen.score == 1.0


def test_equal_candidates_go_to_the_first_listed():
    labels, probs = _complementary()
    chosen = select([probs[0], probs[0].copy()], labels, "accuracy")
    assert chosen.counts == (1, 0)


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro", "log_loss"])
@pytest.mark.parametrize("seed", range(3))
def test_never_worse_than_the_best_single_candidate(metric, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=300)
    # Noisy candidates of varying quality: logits pulled towards the truth by a random amount.
    probs = []
    for strength in rng.uniform(0.2, 2.0, size=5):
        logits = rng.normal(size=(300, 4)) + strength * np.eye(4)[labels]
        exp = np.exp(logits)
        probs.append(exp / exp.sum(axis=1, keepdims=True))
    singles = [metrics.score(metric, labels, p) for p in probs]
    best_single = min(singles) if metric == "log_loss" else max(singles)

    chosen = select(probs, labels, metric)

    assert not metrics.is_better(metric, best_single, chosen.score)
    assert chosen.score == pytest.approx(
        metrics.score(metric, labels, combine(probs, chosen.weights))
    )
    assert sum(chosen.weights) == pytest.approx(1.0)
    assert len(chosen.scores) == 20 and sum(chosen.counts) <= 20


def test_nothing_to_select_is_an_error():
    with pytest.raises(ValueError, match="at least one candidate"):
        select([], np.array([0, 1]), "accuracy")

"""Metrics on folds that miss a class: right values, finite, and no warnings."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from trainer.errors import ConfigError
from trainer.metrics import (
    DIRECTIONS,
    accuracy,
    confusion,
    f1_macro,
    is_better,
    log_loss,
    per_class_f1,
    score,
)

# Three classes; class 2 has no sample in this validation fold and is never predicted.
Y_TRUE = np.array([0, 0, 0, 1, 1, 1])
Y_PRED = np.array([0, 0, 1, 1, 1, 1])


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn)


def test_accuracy():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(5 / 6)


def test_f1_macro_ignores_a_class_missing_from_the_fold():
    expected = (_f1(tp=2, fp=0, fn=1) + _f1(tp=3, fp=1, fn=0)) / 2
    assert f1_macro(Y_TRUE, Y_PRED) == pytest.approx(expected)


def test_f1_macro_counts_a_predicted_but_absent_class_as_zero():
    y_pred = np.array([0, 0, 2, 1, 1, 1])
    expected = (_f1(tp=2, fp=0, fn=1) + 1.0 + 0.0) / 3
    assert f1_macro(Y_TRUE, y_pred) == pytest.approx(expected)


def test_f1_macro_perfect_and_all_wrong():
    assert f1_macro(Y_TRUE, Y_TRUE) == 1.0
    assert f1_macro(np.array([0, 0]), np.array([1, 1])) == 0.0


def test_per_class_f1_marks_absent_classes_nan():
    scores = per_class_f1(Y_TRUE, Y_PRED, num_classes=4)
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores[:2], [_f1(2, 0, 1), _f1(3, 1, 0)])
    assert np.isnan(scores[2:]).all()
    assert per_class_f1(Y_TRUE, np.array([0, 0, 2, 1, 1, 1]), 3)[2] == 0.0


def test_confusion_rows_are_true_labels():
    matrix = confusion(Y_TRUE, Y_PRED, num_classes=3)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 3, 0], [0, 0, 0]])


def test_log_loss_uses_every_class_column():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    y_true = np.array([0, 1])
    assert log_loss(y_true, probs) == pytest.approx(-(math.log(0.7) + math.log(0.5)) / 2)


def test_log_loss_is_finite_for_certain_mistakes_and_unnormalised_rows():
    probs = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    value = log_loss(np.array([0, 0]), probs)
    assert math.isfinite(value)
    assert value == pytest.approx(-math.log(1e-7) / 2, rel=1e-3)
    assert math.isfinite(log_loss(np.array([1]), np.array([[0.3, 0.3, 0.3]])))


def test_log_loss_with_a_single_class_in_the_fold():
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]])
    assert log_loss(np.array([0, 0]), probs) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)


def test_score_dispatches_with_argmax():
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0]])
    y_true = np.array([0, 1, 1, 1])
    assert score("accuracy", y_true, probs) == pytest.approx(0.75)
    assert score("f1_macro", y_true, probs) == pytest.approx(f1_macro(y_true, probs.argmax(1)))
    assert score("log_loss", y_true, probs) == pytest.approx(log_loss(y_true, probs))


def test_is_better_follows_the_direction():
    assert DIRECTIONS["log_loss"] == "minimize"
    assert is_better("f1_macro", 0.8, 0.7) and not is_better("f1_macro", 0.7, 0.7)
    assert is_better("accuracy", 0.5, 0.4)
    assert is_better("log_loss", 0.3, 0.4) and not is_better("log_loss", 0.4, 0.3)


def test_nan_is_never_better():
    nan = float("nan")
    for metric in DIRECTIONS:
        assert not is_better(metric, nan, 0.5)
        assert is_better(metric, 0.5, nan)
        assert not is_better(metric, nan, nan)


def test_unknown_metric():
    with pytest.raises(ConfigError, match="metric='auc'"):
        score("auc", Y_TRUE, np.eye(3)[Y_PRED])
    with pytest.raises(ConfigError):
        is_better("auc", 1.0, 0.0)

"""Validation metrics that behave on small folds: missing classes never warn or mislead.

Stratified folds of a small class can hold none of its samples (library-facts.md §6); every
function here stays finite and silent in that case.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

from trainer.config import DIRECTIONS
from trainer.errors import ConfigError

# Probabilities are clipped to this before the log, so a confident mistake costs ~16, not inf.
_PROB_FLOOR = 1e-7


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of predictions equal to the true label."""
    return float(skm.accuracy_score(y_true, y_pred))


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in ``y_true`` or ``y_pred``.

    A class that is missing from the fold and never predicted has no defined F1, so it is left
    out instead of counting as 0; a class that is predicted but absent counts as 0.
    """
    labels = np.union1d(y_true, y_pred)
    return float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0.0))


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """F1 of each class ``0 .. num_classes - 1``; NaN for a class absent from both inputs."""
    labels = np.arange(num_classes)
    scores = skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0.0)
    seen = np.isin(labels, y_true) | np.isin(labels, y_pred)
    return np.where(seen, scores, np.nan).astype(np.float64)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix, shape ``(num_classes, num_classes)``, int64; rows are true labels."""
    matrix = skm.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    return matrix.astype(np.int64)


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels under ``probs`` (N, num_classes).

    Every column is a label, even for classes missing from the fold; probabilities are clipped
    and renormalised, so the result is finite and scikit-learn has nothing to warn about.
    """
    clipped = np.clip(np.asarray(probs, dtype=np.float64), _PROB_FLOOR, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    labels = np.arange(clipped.shape[1])
    return float(skm.log_loss(y_true, clipped, labels=labels))


_LABEL_METRICS = {"accuracy": accuracy, "f1_macro": f1_macro}


def score(metric: str, y_true: np.ndarray, probs: np.ndarray) -> float:
    """The value of ``metric`` for class probabilities ``probs`` (N, num_classes).

    Label metrics (``accuracy``, ``f1_macro``) score the argmax prediction.

    Raises:
        ConfigError: ``metric`` is not a key of `DIRECTIONS`.
    """
    _direction(metric)
    if metric == "log_loss":
        return log_loss(y_true, probs)
    return _LABEL_METRICS[metric](y_true, np.asarray(probs).argmax(axis=1))


def is_better(metric: str, a: float, b: float) -> bool:
    """Whether score ``a`` is strictly better than ``b``; NaN is never better, anything beats NaN.

    Raises:
        ConfigError: ``metric`` is not a key of `DIRECTIONS`.
    """
    direction = _direction(metric)
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if direction == "maximize" else a < b


def _direction(metric: str) -> str:
    """``maximize`` or ``minimize`` for a known metric name."""
    if metric not in DIRECTIONS:
        known = ", ".join(repr(name) for name in DIRECTIONS)
        raise ConfigError(f"metric={metric!r} is not one of {known}; use one of those.")
    return DIRECTIONS[metric]

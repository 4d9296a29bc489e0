"""The figures tracking logs: out-of-fold confusion, optimisation history, importances.

Figures are `matplotlib.figure.Figure` objects rather than pyplot figures, so tracking never
changes the process's plotting backend or leaves figures open. Drawing is pure (no MLflow call).
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from search.keys import FOLD_SCORES
from trainer.metrics import confusion

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

    from search.tracking.artifacts import FoldPredictions

_MAX_ANNOTATED_CLASSES = 20
_MAX_TICK_CLASSES = 50


def confusion_figure(
    predictions: Sequence[FoldPredictions], labels: np.ndarray, classes: Sequence[str], title: str
) -> Figure:
    """The out-of-fold confusion matrix: counts, coloured by the share of each true class."""
    from matplotlib.figure import Figure

    indices = np.concatenate([p.indices for p in predictions])
    predicted = np.concatenate([p.probs.argmax(axis=1) for p in predictions])
    matrix = confusion(labels[indices], predicted, len(classes))
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = [name[:14] for name in classes] if len(classes) <= _MAX_TICK_CLASSES else []
    # Fixed margins sized for the tick labels: a layout engine or a colour bar would double the
    # drawing time, which is paid after every trial.
    side, margin = min(3 + 0.4 * len(classes), 16), 0.6 + 0.09 * max(map(len, names), default=0)
    fig = Figure(figsize=(side + margin + 0.3, side + margin + 0.5))
    width, height = fig.get_size_inches()
    fig.subplots_adjust(margin / width, margin / height, 1 - 0.3 / width, 1 - 0.5 / height)
    ax = fig.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= _MAX_ANNOTATED_CLASSES:
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if shares[i, j] > 0.6 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    if names:
        ax.set_xticks(range(len(classes)), names, rotation=90)
        ax.set_yticks(range(len(classes)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (colour: share of the class)")
    ax.set_title(title, fontsize=10)
    return fig


def history_figure(trials: Sequence[FrozenTrial], *, metric: str, maximize: bool) -> Figure:
    """Each trial's value by trial number, the best so far, and pruned trials' partial means."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.user_attrs.get(FOLD_SCORES)]
    if pruned:
        xs = [t.number for t in pruned]
        ys = [statistics.fmean(t.user_attrs[FOLD_SCORES]) for t in pruned]
        ax.scatter(xs, ys, marker="x", color="0.6", label="pruned (mean of trained folds)")
    if done:
        values = [t.value for t in done]
        best = np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)
        ax.scatter([t.number for t in done], values, color="tab:blue", label="complete")
        ax.step([t.number for t in done], best, where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} (mean over folds)")
    ax.set_title(f"Optimisation history ({'maximised' if maximize else 'minimised'})")
    if done or pruned:
        ax.legend(loc="best")
    return fig


def importance_figure(study: optuna.Study) -> Figure | None:
    """Optuna's parameter importances as bars; None until they can be computed."""
    import optuna
    from matplotlib.figure import Figure

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "too few trials": the plot says what it can
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # e.g. no parameter varies yet
        return None
    if not importances:
        return None
    names = list(importances)[::-1]
    fig = Figure(figsize=(7, 1.2 + 0.4 * len(names)), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (Optuna's default evaluator)")
    ax.set_title(f"Parameter importances ({len(complete)} complete trials)")
    return fig


def safe_figure(build: Callable[..., Figure | None], *args: Any, **kwargs: Any) -> Figure | None:
    """``build(...)``, or None if drawing failed (a missing plot must not stop a study)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build(*args, **kwargs)
    except Exception:
        return None

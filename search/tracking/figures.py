"""The out-of-fold confusion matrix a trial run logs (the study's plots: `search.study.plots`).

Figures are `matplotlib.figure.Figure` objects rather than pyplot figures, so tracking never
changes the process's plotting backend or leaves figures open. Drawing is pure (no MLflow call).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from trainer.metrics import confusion

if TYPE_CHECKING:
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

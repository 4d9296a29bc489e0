"""The trainer's shared types: a fold split, an epoch's metrics, a fold's result, divergence.

They live apart from the training loop so that fold splitting and the study side can use them
without importing the loop (and everything it imports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Split:
    """One fold: indices into the dataset to train on and to validate on."""

    fold: int
    train: np.ndarray
    val: np.ndarray


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch of one fold measured; ``score`` is the config's metric."""

    fold: int
    epoch: int
    train_loss: float
    val_loss: float
    accuracy: float
    f1_macro: float
    lr: float
    score: float
    seconds: float

    def scalars(self) -> dict[str, float]:
        """The measured values by name, without fold and epoch."""
        values = asdict(self)
        del values["fold"], values["epoch"]
        return values


# A callback returns None to go on, or a short reason to stop the fold now.
Callback = Callable[[EpochMetrics], str | None]


@dataclass(frozen=True)
class FoldResult:
    """A trained fold: its best epoch's weights, score and out-of-fold probabilities."""

    fold: int
    score: float
    best_epoch: int
    history: tuple[EpochMetrics, ...]
    val_indices: np.ndarray
    val_probs: np.ndarray
    state_dict: dict[str, torch.Tensor]
    seconds: float
    stop_reason: str | None

    @property
    def epochs_run(self) -> int:
        """Epochs actually trained (fewer than configured when stopped early)."""
        return len(self.history)


class Diverged(RuntimeError):
    """The training loss or the validation predictions became NaN or infinite.

    The message says which and in which epoch.
    """

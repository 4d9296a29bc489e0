"""The trainer's shared types: a fold split, an epoch's metrics, a fold's result, divergence,
and `FitHook`, through which `trainer.fit` tells the study side what it does.

They live apart from the training loop so that fold splitting and the study side can use them
without importing the loop (and everything it imports).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the study side imports these types without paying for torch
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


class FitHook:
    """Told by `trainer.fit` about one fold as it trains; subclasses override what they need.

    Every hook of a fit sees every call, in order: a hook that asks to stop does not hide that
    epoch from the hooks after it (tracking must log the epoch that stopped the fold).
    """

    def before_fold(self, split: Split) -> None:
        """Called once, before the fold's first epoch."""

    def after_epoch(self, row: EpochMetrics) -> str | None:
        """Called after every epoch with its metrics.

        Returns:
            A short reason to stop the fold now, or None to go on.
        """
        return None

    def after_fold(self, result: FoldResult) -> None:
        """Called once with the fold's result (not when the fold raised, e.g. `Diverged`)."""

"""Helpers the MLflow tracking tests share: a tiny digits space, a quiet console, a saboteur.

Plain functions and classes, imported by the tests that need them (test modules never import
each other).
"""

from __future__ import annotations

import io
from pathlib import Path

import optuna
from rich.console import Console

from search.hooks import Hooks

SPACE = """\
from search.space import choice, loguniform

data = "builtin:digits"
holdout = 0.0
image_size = 32
folds = 2
epochs = 2
backbone = "test_vit"
batch_size = 64
augment = "none"
hflip = False
pruner = "none"
lr = loguniform(1e-3, 1e-2)
dropout = choice(0.0, 0.2)
"""


def write_space(folder: Path, name: str = "tiny") -> Path:
    """A tiny search space over digits (2 folds x 2 epochs of test_vit at 32 px)."""
    path = folder / f"{name}.py"
    path.write_text(SPACE)
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


class Saboteur(Hooks):
    """Fails trial 1 in its second epoch and prunes trial 2 in its second fold."""

    def epoch_ended(self, trial: optuna.Trial, row) -> None:
        if trial.number == 1 and row.epoch == 1:
            raise RuntimeError("boom (raised by the test)")
        if trial.number == 2 and row.fold == 1:
            trial.set_user_attr("pruned_reason", "pruned by the test")
            trial.set_user_attr("pruned_at", {"fold": 1, "epoch": row.epoch + 1})
            raise optuna.TrialPruned("pruned by the test")

"""A tiny digits space for `hpo run` tests, and what a failed run leaves behind."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

DIGITS_SPACE = """\
from search.space import loguniform

data = "builtin:digits"
image_size = 32
folds = 2
epochs = 1
tracking = "none"
holdout = 0
augment = "none"
hflip = False
batch_size = 64
backbone = "test_resnet"
lr = loguniform(1e-3, 5e-3)
"""
"""Two folds of one epoch of test_resnet at 32 px: a trial takes seconds."""


def study_exists(name: str) -> bool:
    """Whether study ``name`` is in its default storage, studies/<name>/study.db."""
    storage = Path("studies") / name / "study.db"
    return storage.exists() and name in optuna.get_all_study_names(f"sqlite:///{storage}")


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The lines a run wrote to stderr, progress bars left out; there must be no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line and not line.startswith("Caching")]

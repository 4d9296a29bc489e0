"""The searched digits space that the workers, scale-out, reliability and outage tests run.

One searched parameter (the learning rate) at 32 px; with `SETTINGS` and one epoch a trial is
two folds of test_vit and takes seconds. Each test module adds the settings its processes need
(epochs, heartbeats, tracking, threads).
"""

from __future__ import annotations

from pathlib import Path

SPACE = """\
from search.space import loguniform

data = "builtin:digits"
image_size = 32
hflip = False
lr = loguniform(1e-3, 5e-3)
"""

SETTINGS = ("folds=2", "backbone=test_vit", "augment=none")
"""Command-line settings shared by those tests: two folds of test_vit without augmentation."""


def write_space(path: Path) -> Path:
    """`SPACE` written to ``path``: a space file whose stem is the study's name."""
    path.write_text(SPACE)
    return path

"""The shared trainer types: importable without the training loop; a plain hook is inert."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from trainer.types import EpochMetrics, FitHook, Split


def test_the_shared_types_import_without_the_loop():
    code = (
        "import sys, trainer.types\n"
        "heavy = [m for m in ('trainer.loop', 'timm', 'albumentations', 'sklearn', 'optuna')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_plain_hook_does_nothing_and_never_stops_a_fold():
    hook = FitHook()
    row = EpochMetrics(0, 0, 1.0, 1.0, 0.5, 0.5, 1e-3, 0.5, 0.1)
    assert hook.before_fold(Split(0, np.arange(3), np.arange(3, 5))) is None
    assert hook.after_epoch(row) is None

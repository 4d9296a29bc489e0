"""The shared trainer types: importable without the training loop."""

from __future__ import annotations

import subprocess
import sys


def test_the_shared_types_import_without_the_loop():
    code = (
        "import sys, trainer.types\n"
        "heavy = [m for m in ('trainer.loop', 'timm', 'albumentations', 'sklearn', 'optuna')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

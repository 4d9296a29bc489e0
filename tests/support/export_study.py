"""The finished digits study the export tests share (its fixture is in tests/search/export)."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna

from search.context import RunRequest
from search.engine.run import prepare, run
from search.export.checkpoints import checkpoint_hook
from search.export.entry_points import export_study
from search.tracking.plots import study_figures

SPACE = "from search.space import loguniform\n\nlr = loguniform(3e-3, 1e-2)\n"
OVERRIDES = (
    "folds=2",
    "epochs=1",
    "backbone=test_vit",
    "image_size=32",
    "holdout=0.2",
    "tracking=none",
    "top_k=2",
)


@dataclass(frozen=True)
class DigitsStudy:
    """A finished 3-trial study on digits (top_k=2) and a copy of its top-1 export."""

    root: Path
    request: RunRequest
    top1: Path

    @property
    def folder(self) -> Path:
        return self.root / "studies" / "digits"

    def study(self) -> optuna.Study:
        with contextlib.chdir(self.root):
            return prepare(self.request).study


def build_digits_study(root: Path) -> DigitsStudy:
    """Run the 3-trial study in ``root`` and copy its top-1 export to ``root/top1``."""
    with contextlib.chdir(root):
        (root / "digits.py").write_text(SPACE)
        request = RunRequest(space="digits.py", overrides=OVERRIDES, trials=3, progress=False)
        assert run(request, hooks=[checkpoint_hook]) == "done"
        result = export_study(prepare(request), top_k=1, plots=study_figures)
        shutil.copytree(result.folder, root / "top1")
    return DigitsStudy(root, request, root / "top1")

"""A table of recorded learning curves as hpo's trainer: look-ups instead of training.

`Curves` reads ``bench/curves/<task>.parquet`` (see bench/curves/record.py) and maps a sampled
configuration to the nearest recorded one: the categorical choices exactly (a conditional
parameter exists in both or in neither), the numbers by Euclidean distance of their places in
their ranges, on the distributions' own scales (a log range by its logarithm). Only when no row
has the same choices does a row with other choices count, one unit of distance per differing
choice.

`replaying` puts a `TableTrainer` in place of `trainer.loop.fit` for hpo's real objective
(`search.engine.objective.Objective`): every epoch of a fold goes to the fit hooks (so the
rung reporter and the pruner decide as in a real run), a hook's reason stops the fold, a fold
recorded as diverged raises `Diverged`. Nothing is trained and no image is read.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CURVES = Path(__file__).resolve().parent / "curves"


def _unit(dist: Any, value: float) -> float:
    """``value``'s place in ``dist``'s range, on its own scale (log for a log range)."""
    low, high = float(dist.low), float(dist.high)
    if dist.log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (float(value) - low) / (high - low) if high > low else 0.0


class Curves:
    """One task's recorded table and the space it was recorded from.

    Args:
        frame: The table (bench/curves/record.py's columns).
        space: The task's validated space (`search.space.spacefile.Space`).

    Attributes:
        scores: Per row, folds x epochs validation scores (NaN where the fold diverged).
        holdout: Per row, the holdout score (NaN for a diverged row).
        params: Per row, the searched values.
    """

    def __init__(self, frame: pd.DataFrame, space: Any) -> None:
        self.space = space
        self.scores = [np.asarray([list(fold) for fold in row], float) for row in frame.fold_scores]
        self.holdout = frame["holdout"].to_numpy(float)
        self.params = [json.loads(p) for p in frame["params"]]
        self.dists = {name: s.distribution for name, s in space.searched.items()}
        self.numeric = [n for n, d in self.dists.items() if not hasattr(d, "choices")]
        self.points = np.array([self._point(p) for p in self.params])
        self.keys = [self._key(p) for p in self.params]
        self._found: dict[str, int] = {}

    @classmethod
    def load(cls, task: str, folder: Path = CURVES) -> Curves:
        """``folder/<task>.parquet`` with its space (``<task>_space.py`` there, else CURVES')."""
        from search.space.spacefile import load_space

        space_file = folder / f"{task}_space.py"
        space = load_space(space_file if space_file.is_file() else CURVES / space_file.name)
        return cls(pd.read_parquet(folder / f"{task}.parquet"), space)

    def _key(self, params: Mapping[str, Any]) -> tuple:
        """The categorical choices and which numbers exist: what must match exactly."""
        choices = tuple((n, params[n]) for n in self.dists if n not in self.numeric and n in params)
        return choices, tuple(n for n in self.numeric if n in params)

    def _point(self, params: Mapping[str, Any]) -> list[float]:
        """The numbers' places in their ranges (NaN for a number the params lack)."""
        return [_unit(self.dists[n], params[n]) if n in params else math.nan for n in self.numeric]

    def nearest(self, params: Mapping[str, Any]) -> int:
        """The row of the recorded configuration nearest to ``params``."""
        text = json.dumps(dict(params), sort_keys=True)
        if text not in self._found:
            self._found[text] = self._search(params)
        return self._found[text]

    def _search(self, params: Mapping[str, Any]) -> int:
        key, point = self._key(params), np.array(self._point(params))
        apart = np.nan_to_num((self.points - point) ** 2, nan=1.0).sum(axis=1)
        same = np.array([k == key for k in self.keys])
        if not same.any():  # no row with these choices: each differing one costs a full range
            choices = dict(key[0])
            apart += [sum(choices.get(n) != v for n, v in k[0]) for k in self.keys]
            return int(np.argmin(apart))
        return int(np.flatnonzero(same)[np.argmin(apart[same])])

    def params_of(self, config: Any) -> dict[str, Any]:
        """The searched values of a trial's `TrainConfig` (inactive conditional ones left out)."""
        resolved = config.to_dict()
        return {n: resolved[n] for n, s in self.space.searched.items() if s.active(resolved)}

    def cv(self, row: int) -> float:
        """A row's cross-validation score: the mean over folds of each fold's best epoch."""
        return float(np.mean(np.max(self.scores[row], axis=1)))


class TableTrainer:
    """`trainer.loop.fit` replaced by look-ups into ``curves`` (same signature and hooks)."""

    def __init__(self, curves: Curves) -> None:
        self.curves = curves

    def fit(self, config: Any, data: object, split: Any, hooks: Sequence[Any] = (), **_: Any):
        """The fold ``split.fold`` of the row nearest to ``config``, epoch by epoch."""
        from trainer.types import Diverged, EpochMetrics, FoldResult

        row = self.curves.nearest(self.curves.params_of(config))
        history, reason = [], None
        for epoch, score in enumerate(self.curves.scores[row][split.fold][: config.epochs]):
            if not math.isfinite(score):
                raise Diverged(f"recorded as diverged in fold {split.fold}")
            metrics = EpochMetrics(split.fold, epoch, math.nan, math.nan, score, score, 0, score, 0)
            history.append(metrics)
            reason = next((r for r in (hook.after_epoch(metrics) for hook in hooks) if r), None)
            if reason:
                break
        best = int(np.argmax([m.score for m in history]))
        empty = np.zeros((0, 1))
        return FoldResult(
            split.fold, history[best].score, best, tuple(history), split.val, empty, {}, 0, reason
        )


class ReplayData:
    """The part of `StudyData` the objective reads: fold splits (no images are needed)."""

    def __init__(self, folds: int) -> None:
        from trainer.types import Split

        empty = np.zeros(0, dtype=int)
        self.splits = [Split(fold, empty, empty) for fold in range(folds)]
        self.splits_id = "replay"

    def images(self, size: int) -> None:
        return None


@contextlib.contextmanager
def replaying(curves: Curves, reporter: type | None = None) -> Iterator[None]:
    """hpo's objective and trial loop on ``curves`` while inside (``reporter``: another rung
    reporter class for `search.engine.objective`, e.g. one step per epoch).

    `gc.collect` after every trial (the trial loop's `release_memory`) frees a model's memory
    in a real run; here there is none, and it would cost more than the trial.
    """
    import search.engine.objective as objective
    import search.engine.runner as runner

    saved = objective.fit, objective.RungReporter, runner.release_memory
    objective.fit = TableTrainer(curves).fit
    objective.RungReporter = reporter or saved[1]
    runner.release_memory = lambda: None
    try:
        yield
    finally:
        objective.fit, objective.RungReporter, runner.release_memory = saved

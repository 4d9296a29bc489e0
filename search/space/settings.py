"""Study-level settings a space file may set, beside the `TrainConfig` fields.

These are fixed for a whole study (they define its data, splits, sampler and run control), so a
space file can only give them a literal value, never a distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainer.config import TTA_MODES

SAMPLERS = ("tpe", "random", "qmc", "cmaes", "gp")
PRUNERS = ("median", "wilcoxon", "none")
TRACKING = ("mlflow", "none")
ENSEMBLES = ("select", "best")


@dataclass(frozen=True)
class Setting:
    """A study setting: its default, a check returning a problem or None, and its role."""

    default: Any
    check: Callable[[Any], str | None]
    # Run control (how long, how many) may change between runs of the same study; everything
    # else is part of the study's identity and is compared on resume.
    run_control: bool = False


def _int_at_least(low: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            return f"must be an integer of at least {low}"
        return None

    return check


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in options else "must be one of " + ", ".join(options)

    return check


def _fraction(high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok and 0 <= value < high else f"must be a number in [0, {high})"

    return check


def _optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda value: None if value is None else check(value)


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _positive(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return None if ok else "must be a positive number of seconds"


def _fractions(value: Any) -> str | None:
    ok = isinstance(value, tuple | list) and all(
        isinstance(f, int | float) and not isinstance(f, bool) and 0 < f < 1 for f in value
    )
    return None if ok else "must be a tuple of fractions between 0 and 1, e.g. (1/3,)"


def _baselines(value: Any) -> str | None:
    # Each entry's names and values are checked against the searched parameters later.
    ok = isinstance(value, tuple | list) and all(isinstance(b, dict) for b in value)
    return None if ok else 'must be a list of dicts of parameter values, e.g. [{"lr": 1e-3}]'


def _p_value(value: Any) -> str | None:
    ok = isinstance(value, float) and 0 < value < 1
    return None if ok else "must be a float in (0, 1)"


SETTINGS: dict[str, Setting] = {
    "data": Setting("builtin:digits", _text),
    "folds": Setting(5, _int_at_least(2)),
    # None: 0.1 for data of at least 1,000 images, else 0 (see search.study.storage).
    "holdout": Setting(None, _optional(_fraction(0.5))),
    "sampler": Setting("tpe", _one_of(SAMPLERS)),
    "pruner": Setting("median", _one_of(PRUNERS)),
    "pruner_startup_trials": Setting(3, _int_at_least(1)),
    "pruner_epoch_rungs": Setting((1 / 3,), _fractions),
    "pruner_p": Setting(0.1, _p_value),
    "baselines": Setting((), _baselines, run_control=True),
    "patience_trials": Setting(None, _optional(_int_at_least(1)), run_control=True),
    "trials": Setting(20, _int_at_least(1), run_control=True),
    "timeout": Setting(None, _optional(_positive), run_control=True),
    "max_failures": Setting(5, _int_at_least(1), run_control=True),
    "tracking": Setting("mlflow", _one_of(TRACKING), run_control=True),
    "heartbeat": Setting(20, _int_at_least(1), run_control=True),
    # How long a worker waits for a study database that went away before it stops.
    "storage_patience": Setting(120, _positive, run_control=True),
    "top_k": Setting(5, _int_at_least(1), run_control=True),
    "ensemble": Setting("select", _one_of(ENSEMBLES), run_control=True),
    "tta": Setting("none", _one_of(TTA_MODES), run_control=True),
}

"""Study-level settings a space file may set, beside the `TrainConfig` fields.

These are fixed for a whole study (they define its data, splits, sampler, metric, seed and run
control), so a space file can only give them a literal value, never a distribution.
`StudySettings` holds them as one frozen object, one attribute per setting; `SETTINGS`
describes each one (default, check, role) and is derived from its fields, so a setting is
declared once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.config import DIRECTIONS, TTA_MODES, TrainConfig

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
    # Passed to the trainer in every trial's `TrainConfig` (see `StudySettings.for_trainer`).
    trainer: bool = False
    # Why it cannot be searched, when there is more to say than "it is fixed for the study".
    fixed_because: str | None = None


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


def _metric(value: Any) -> str | None:
    if isinstance(value, str) and value in DIRECTIONS:
        return None
    return "is not allowed; use one of " + ", ".join(map(repr, DIRECTIONS))


def _integer(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return None if ok else "has the wrong type; it must be an integer"


def _setting(default: Any, check: Callable[[Any], str | None], **role: Any) -> Any:
    """A `StudySettings` field whose metadata holds its check and role (see `Setting`)."""
    return field(default=default, metadata={"check": check, **role})


# The trainer's own defaults, so that a study and a direct `TrainConfig` agree on them.
_DEFAULT = TrainConfig()
_DIRECTION = "it decides whether the study maximises or minimises its score"


@dataclass(frozen=True, kw_only=True)
class StudySettings:
    """Every study setting of a space, one attribute each; built and checked by `load_space`.

    Attributes hold the values as given (or their defaults); `to_dict`, `identity`,
    `run_control` and `for_trainer` are the only ways to read them by name, for the places
    that store them or hand them on.

    ``metric`` and ``seed`` are study settings (one value for the whole study: the metric sets
    the study's direction, the seed its folds and sampler), yet the trainer needs them too. The
    trainer never imports `search`, so it keeps them as `TrainConfig` fields, and the study
    hands them over: `search.space.spacefile.Space.config` puts `for_trainer` into every
    trial's config. Trial configs, and the identity of studies that fixed them (under
    ``fixed``, see `Space.identity`), therefore store them exactly as before.
    """

    data: str = _setting("builtin:digits", _text)
    folds: int = _setting(5, _int_at_least(2))
    # None: 0.1 for data of at least 1,000 images, else 0 (see search.study.storage).
    holdout: float | None = _setting(None, _optional(_fraction(0.5)))
    sampler: str = _setting("tpe", _one_of(SAMPLERS))
    pruner: str = _setting("median", _one_of(PRUNERS))
    pruner_startup_trials: int = _setting(3, _int_at_least(1))
    pruner_epoch_rungs: Sequence[float] = _setting((1 / 3,), _fractions)
    pruner_p: float = _setting(0.1, _p_value)
    baselines: Sequence[Mapping[str, Any]] = _setting((), _baselines, run_control=True)
    patience_trials: int | None = _setting(None, _optional(_int_at_least(1)), run_control=True)
    trials: int = _setting(20, _int_at_least(1), run_control=True)
    timeout: float | None = _setting(None, _optional(_positive), run_control=True)
    max_failures: int = _setting(5, _int_at_least(1), run_control=True)
    tracking: str = _setting("mlflow", _one_of(TRACKING), run_control=True)
    heartbeat: int = _setting(20, _int_at_least(1), run_control=True)
    # How long a worker waits for a study database that went away before it stops.
    storage_patience: float = _setting(120, _positive, run_control=True)
    top_k: int = _setting(5, _int_at_least(1), run_control=True)
    ensemble: str = _setting("select", _one_of(ENSEMBLES), run_control=True)
    tta: str = _setting("none", _one_of(TTA_MODES), run_control=True)
    metric: str = _setting(_DEFAULT.metric, _metric, trainer=True, fixed_because=_DIRECTION)
    seed: int = _setting(_DEFAULT.seed, _integer, trainer=True)

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, in declaration order (the values themselves, not copies)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def identity(self) -> dict[str, Any]:
        """The settings that make two runs the same study, as stored in its identity.

        Run control is left out (it may change between runs), and so is ``data``: its
        location may differ between machines, and its contents are compared separately. The
        settings handed to the trainer are stored with the fixed values (see `for_trainer`).
        """
        return {k: v for k, v in self.to_dict().items() if k != "data" and _kind(k) == "study"}

    def run_control(self) -> dict[str, Any]:
        """The settings that may change between runs of one study (how long, how many)."""
        return {k: v for k, v in self.to_dict().items() if _kind(k) == "run_control"}

    def for_trainer(self) -> dict[str, Any]:
        """The settings every trial's `TrainConfig` receives: ``metric`` and ``seed``."""
        return {k: v for k, v in self.to_dict().items() if _kind(k) == "trainer"}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> StudySettings:
        """Settings from stored ``values`` (names that are not settings are ignored)."""
        return cls(**{k: v for k, v in values.items() if k in SETTINGS})


SETTINGS: dict[str, Setting] = {
    f.name: Setting(f.default, **f.metadata) for f in dataclasses.fields(StudySettings)
}
"""Each setting's default, check and role, by name (derived from `StudySettings`)."""


def _kind(name: str) -> str:
    setting = SETTINGS[name]
    return "run_control" if setting.run_control else "trainer" if setting.trainer else "study"

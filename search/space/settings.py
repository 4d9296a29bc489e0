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
from typing import Any, get_type_hints

from trainer import checks
from trainer.config import TTA_MODES, TrainConfig

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


def _setting(default: Any, check: Callable[[Any], str | None], **role: Any) -> Any:
    """A `StudySettings` field whose metadata holds its check and role (see `Setting`)."""
    return field(default=default, metadata={"check": check, **role})


def _trainer(name: str, **role: Any) -> Any:
    """A setting the trainer receives: `TrainConfig`'s default and the check of its field."""
    check = checks.field_check(name, get_type_hints(TrainConfig)[name])
    return _setting(getattr(TrainConfig(), name), check, trainer=True, **role)


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

    data: str = _setting("builtin:digits", checks.text)
    folds: int = _setting(5, checks.int_at_least(2))
    # None: 0.1 for data of at least 1,000 images, else 0 (see search.study.splits).
    holdout: float | None = _setting(None, checks.optional(checks.fraction(0.5)))
    sampler: str = _setting("random", checks.one_of(SAMPLERS))
    pruner: str = _setting("median", checks.one_of(PRUNERS))
    pruner_startup_trials: int = _setting(3, checks.int_at_least(1))
    pruner_epoch_rungs: Sequence[float] = _setting((1 / 3,), checks.fractions)
    pruner_p: float = _setting(0.1, checks.p_value)
    baselines: Sequence[Mapping[str, Any]] = _setting((), checks.dicts, run_control=True)
    patience_trials: int | None = _setting(
        None, checks.optional(checks.int_at_least(1)), run_control=True
    )
    trials: int = _setting(20, checks.int_at_least(1), run_control=True)
    timeout: float | None = _setting(None, checks.optional(checks.seconds), run_control=True)
    max_failures: int = _setting(5, checks.int_at_least(1), run_control=True)
    tracking: str = _setting("mlflow", checks.one_of(TRACKING), run_control=True)
    heartbeat: int = _setting(20, checks.int_at_least(1), run_control=True)
    # How long a worker waits for a study database that went away before it stops.
    storage_patience: float = _setting(120, checks.seconds, run_control=True)
    top_k: int = _setting(5, checks.int_at_least(1), run_control=True)
    ensemble: str = _setting("select", checks.one_of(ENSEMBLES), run_control=True)
    tta: str = _setting("none", checks.one_of(TTA_MODES), run_control=True)
    metric: str = _trainer("metric", fixed_because=_DIRECTION)
    seed: int = _trainer("seed")

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

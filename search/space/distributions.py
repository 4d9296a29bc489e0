"""The helpers a space file uses to say what is searched.

Each helper maps one-to-one onto an Optuna distribution; ``when=`` makes the parameter exist
only when other parameters have the given values::

    from search.space import choice, loguniform, uniform

    lr = loguniform(1e-4, 3e-2)
    loss = choice("ce", "focal")
    focal_gamma = uniform(0.5, 3.0, when={"loss": "focal"})

A condition value may be a single value or a list of values (any of them enables it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from trainer.errors import UserError

__all__ = ["Searched", "SpaceError", "choice", "intrange", "loguniform", "uniform"]

_CHOICE_TYPES = (type(None), bool, int, float, str)


class SpaceError(UserError):
    """A space file that cannot be used as written; the message names the file and line."""


@dataclass(frozen=True)
class Searched:
    """A searched parameter: an Optuna distribution plus an optional condition."""

    distribution: BaseDistribution
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def values_to_check(self) -> tuple[Any, ...]:
        """Values that must each be valid for the parameter: the choices, or both bounds."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return tuple(d.choices)
        return (d.low, d.high)

    def active(self, resolved: Mapping[str, Any]) -> bool:
        """Whether every condition holds for the values already resolved in this trial."""
        return all(resolved.get(name, _MISSING) in allowed for name, allowed in self.when.items())

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask an Optuna trial for a value of this parameter."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(name, d.choices)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)


_MISSING = object()


def choice(*options: Any, when: Mapping[str, Any] | None = None) -> Searched:
    """One of ``options`` (None, bool, int, float or str): `CategoricalDistribution`."""
    if not options:
        raise SpaceError("choice() needs at least one option, e.g. choice('a', 'b').")
    for option in options:
        if not isinstance(option, _CHOICE_TYPES):
            raise SpaceError(
                f"choice() option {option!r} is a {type(option).__name__}; options must be "
                "None, bool, int, float or str."
            )
    if len(set(map(repr, options))) != len(options):
        raise SpaceError(f"choice{options!r} repeats an option; list each option once.")
    return Searched(CategoricalDistribution(options), _conditions(when))


def uniform(
    low: float, high: float, *, step: float | None = None, when: Mapping[str, Any] | None = None
) -> Searched:
    """A float in [low, high], optionally on a grid of ``step``: `FloatDistribution`."""
    low, high = _bounds("uniform", low, high, numbers=(int, float))
    if step is not None and not step > 0:
        raise SpaceError(f"uniform(step={step!r}) must be positive.")
    return Searched(FloatDistribution(low, high, step=step), _conditions(when))


def loguniform(low: float, high: float, *, when: Mapping[str, Any] | None = None) -> Searched:
    """A float in [low, high] sampled on a log scale: `FloatDistribution(log=True)`."""
    low, high = _bounds("loguniform", low, high, numbers=(int, float))
    if low <= 0:
        raise SpaceError(f"loguniform({low!r}, {high!r}) needs low > 0 (a log scale).")
    return Searched(FloatDistribution(low, high, log=True), _conditions(when))


def intrange(
    low: int,
    high: int,
    *,
    step: int = 1,
    log: bool = False,
    when: Mapping[str, Any] | None = None,
) -> Searched:
    """An integer in [low, high] (both included): `IntDistribution`."""
    low, high = _bounds("intrange", low, high, numbers=(int,))
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise SpaceError(f"intrange(step={step!r}) must be an integer of at least 1.")
    if log and (low < 1 or step != 1):
        raise SpaceError(f"intrange({low!r}, {high!r}, log=True) needs low >= 1 and step=1.")
    return Searched(IntDistribution(low, high, step=step, log=log), _conditions(when))


def _bounds(helper: str, low: Any, high: Any, *, numbers: tuple[type, ...]) -> tuple[Any, Any]:
    kind = "integers" if numbers == (int,) else "numbers"
    for value in (low, high):
        if isinstance(value, bool) or not isinstance(value, numbers):
            raise SpaceError(f"{helper}({low!r}, {high!r}): bounds must be {kind}.")
        if not math.isfinite(value):
            raise SpaceError(f"{helper}({low!r}, {high!r}): bounds must be finite.")
    if not low < high:
        raise SpaceError(f"{helper}({low!r}, {high!r}) needs low < high; swap or widen them.")
    return low, high


def _conditions(when: Mapping[str, Any] | None) -> dict[str, tuple[Any, ...]]:
    if when is None:
        return {}
    if not isinstance(when, Mapping) or not all(isinstance(k, str) for k in when):
        raise SpaceError(f"when={when!r} must be a dict such as when={{'loss': 'focal'}}.")
    return {
        name: tuple(value) if isinstance(value, list | tuple | set) else (value,)
        for name, value in when.items()
    }

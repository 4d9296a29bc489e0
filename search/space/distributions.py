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
    call = _call("choice", *options)
    if not options:
        raise SpaceError(f"{call}: needs at least one option; list them, e.g. choice('a', 'b').")
    for option in options:
        if not isinstance(option, _CHOICE_TYPES):
            raise SpaceError(
                f"{call}: option {option!r} is a {type(option).__name__}; options must be "
                "None, bool, int, float or str."
            )
    if len(set(map(repr, options))) != len(options):
        raise SpaceError(f"{call}: repeats an option; list each option once.")
    return Searched(CategoricalDistribution(options), _conditions(call, when))


def uniform(
    low: float, high: float, *, step: float | None = None, when: Mapping[str, Any] | None = None
) -> Searched:
    """A float in [low, high], optionally on a grid of ``step``: `FloatDistribution`."""
    call = _call("uniform", low, high, step=step)
    low, high = _bounds(call, low, high, numbers=(int, float))
    if step is not None and not step > 0:
        raise SpaceError(f"{call}: step must be positive.")
    return Searched(FloatDistribution(low, high, step=step), _conditions(call, when))


def loguniform(low: float, high: float, *, when: Mapping[str, Any] | None = None) -> Searched:
    """A float in [low, high] sampled on a log scale: `FloatDistribution(log=True)`."""
    call = _call("loguniform", low, high)
    low, high = _bounds(call, low, high, numbers=(int, float))
    if low <= 0:
        raise SpaceError(
            f"{call}: low must be above 0 on a log scale; start the range above 0, or use "
            "uniform()."
        )
    return Searched(FloatDistribution(low, high, log=True), _conditions(call, when))


def intrange(
    low: int,
    high: int,
    *,
    step: int = 1,
    log: bool = False,
    when: Mapping[str, Any] | None = None,
) -> Searched:
    """An integer in [low, high] (both included): `IntDistribution`."""
    call = _call("intrange", low, high, step=None if step == 1 else step, log=log or None)
    low, high = _bounds(call, low, high, numbers=(int,))
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise SpaceError(f"{call}: step must be an integer of at least 1.")
    if log and (low < 1 or step != 1):
        raise SpaceError(f"{call}: a log scale needs low >= 1 and step=1.")
    return Searched(IntDistribution(low, high, step=step, log=log), _conditions(call, when))


def _call(helper: str, *args: Any, **keywords: Any) -> str:
    """How the call reads in the space file, e.g. ``uniform(0.9, 0.1)`` (for messages)."""
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in keywords.items() if v is not None]
    return f"{helper}({', '.join(shown)})"


def _bounds(call: str, low: Any, high: Any, *, numbers: tuple[type, ...]) -> tuple[Any, Any]:
    kind = "integers" if numbers == (int,) else "numbers"
    for value in (low, high):
        if isinstance(value, bool) or not isinstance(value, numbers):
            raise SpaceError(f"{call}: bounds must be {kind}.")
        if not math.isfinite(value):
            raise SpaceError(f"{call}: bounds must be finite.")
    if low > high:
        raise SpaceError(f"{call}: low must be below high; swap them.")
    if low == high:
        raise SpaceError(
            f"{call}: low must be below high; widen the range, or assign one value instead."
        )
    return low, high


def _conditions(call: str, when: Mapping[str, Any] | None) -> dict[str, tuple[Any, ...]]:
    if when is None:
        return {}
    if not isinstance(when, Mapping) or not all(isinstance(k, str) for k in when):
        raise SpaceError(f"{call}: when={when!r} must be a dict such as when={{'loss': 'focal'}}.")
    return {
        name: tuple(value) if isinstance(value, list | tuple | set) else (value,)
        for name, value in when.items()
    }

"""A space file's ``baselines``: configurations the study evaluates first (e.g. your current best).

    baselines = [{"backbone": "test_resnet", "lr": 1e-3}, {"loss": "focal", "focal_gamma": 2.0}]

Each entry gives values for some of the searched parameters; the sampler picks the others. The
checks here make a typo or an impossible value an error before any training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from search.space.distributions import Searched, SpaceError


def _fits(value: Any, dist: BaseDistribution) -> Any | None:
    """``value`` as ``dist`` stores it (an int for a float range becomes a float), or None."""
    if isinstance(dist, CategoricalDistribution):
        return value if value in dist.choices else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(dist, IntDistribution) and float(value) != int(value):
        return None
    value = float(value) if isinstance(dist, FloatDistribution) else int(value)
    return value if dist._contains(dist.to_internal_repr(value)) else None


def _allowed(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(map(repr, dist.choices))
    assert isinstance(dist, FloatDistribution | IntDistribution)
    return f"a number from {dist.low} to {dist.high}"


def check_baselines(
    baselines: Sequence[Mapping[str, Any]],
    searched: Mapping[str, Searched],
    fixed: Mapping[str, Any],
    where: str,
) -> tuple[dict[str, Any], ...]:
    """The baselines, each value checked against its parameter's distribution and condition.

    Raises:
        SpaceError: A name that is not searched, a value out of range, or a parameter whose
            condition the baseline's own values rule out.
    """
    checked = []
    for i, baseline in enumerate(baselines):
        params: dict[str, Any] = {}
        for name, value in baseline.items():
            if name not in searched:
                raise SpaceError(
                    f"{where}: baselines[{i}] sets '{name}', which is not a searched parameter "
                    f"of this space; give values only for {', '.join(searched) or 'searched ones'}."
                )
            params[name] = _fits(value, searched[name].distribution)
            if params[name] is None:
                raise SpaceError(
                    f"{where}: baselines[{i}] sets {name}={value!r}, which the space cannot "
                    f"sample; use {_allowed(searched[name].distribution)}."
                )
        _check_conditions(i, params, searched, fixed, where)
        checked.append(params)
    return tuple(checked)


def _check_conditions(
    i: int,
    params: Mapping[str, Any],
    searched: Mapping[str, Searched],
    fixed: Mapping[str, Any],
    where: str,
) -> None:
    resolved = {**fixed, **params}
    for name in params:
        when = searched[name].when
        # Only conditions on values the baseline fixes can be checked; others are sampled.
        if all(other in resolved for other in when) and not searched[name].active(resolved):
            needs = " and ".join(f"{k} in {list(v)}" for k, v in when.items())
            raise SpaceError(
                f"{where}: baselines[{i}] sets '{name}', which exists only when {needs}; "
                f"drop it or set {' and '.join(when)} to match."
            )

"""Every value check of hpo in one place: `TrainConfig` fields and study settings.

A check takes a value and returns None when it is fine, else the end of a sentence that starts
with ``name=value``: ``folds=1`` + ``must be an integer of at least 2``. `TrainConfig` runs
`field_problem` on each of its fields when it is built; the study side (`search.space`) runs
the same functions on a space file, where it adds the file and line, and declares which check
each study setting gets. The module is here, not in `search`, because the trainer never
imports `search` while `search` imports the trainer: both sides reach it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

Check = Callable[[Any], str | None]
"""A value check: None when the value is fine, else the end of a ``name=value ...`` sentence."""


# --- type hints: the type check of every TrainConfig field (and of metric and seed) -----------


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` names (a Literal, a union, int, float, ...).

    Stricter than ``isinstance`` where a space file needs it: True is not an integer, and a
    Literal option must match in value and type (1 is not "1", True is not 1).
    """
    origin = get_origin(hint)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in get_args(hint))
    if origin in (Union, types.UnionType):
        return any(fits(value, arg) for arg in get_args(hint))
    if origin is dict:
        key_hint, value_hint = get_args(hint)
        return isinstance(value, dict) and all(
            fits(k, key_hint) and fits(v, value_hint) for k, v in value.items()
        )
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def expected(hint: Any) -> str:
    """What a value of the wrong type for ``hint`` is told."""
    if get_origin(hint) is Literal:
        return "is not allowed; use one of " + ", ".join(map(repr, get_args(hint)))
    if any(get_origin(arg) is Literal for arg in get_args(hint)):  # Literal["balanced"] | None
        options = [o for arg in get_args(hint) for o in get_args(arg) or (None,)]
        return "is not allowed; use one of " + ", ".join(map(repr, options))
    names = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}
    parts = [_type_name(arg, names) for arg in get_args(hint) or (hint,)]
    return "has the wrong type; it must be " + " or ".join(parts)


def _type_name(hint: Any, names: dict[Any, str]) -> str:
    if get_origin(hint) is dict:  # pretrained's dict: backbone name -> weights
        return "a dict of backbone names to weights files"
    return names.get(hint, "None")


def of_type(hint: Any) -> Check:
    """The check that a value fits ``hint``."""
    return lambda value: None if fits(value, hint) else expected(hint)


# --- ranges of TrainConfig fields (run after the type check) ----------------------------------


def _when(test: Callable[[Any], bool], problem: str) -> Check:
    return lambda value: None if test(value) else problem


_GREATER_THAN_ZERO = _when(lambda v: v > 0, "must be greater than 0")
_UNIT = _when(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
_NON_NEGATIVE = _when(lambda v: v >= 0, "must not be negative")


def _pretrained(value: Any) -> str | None:
    if value == "" or value == {}:
        return "must not be empty; give a weights file, True or False"
    if isinstance(value, dict) and any(not name or v == "" for name, v in value.items()):
        return "must map each backbone name to a weights file (or True)"
    return None


def _epochs(value: Any) -> str | None:
    return _GREATER_THAN_ZERO(value) or (None if value <= 1000 else "must be at most 1000")


FIELD_RANGES: dict[str, Check] = {
    **dict.fromkeys(
        ("image_size", "batch_size", "grad_accum", "lr", "step_size"), _GREATER_THAN_ZERO
    ),
    "epochs": _epochs,
    "pretrained": _pretrained,
    "feature_views": _when(lambda v: 1 <= v <= 64, "must be from 1 to 64"),
    **dict.fromkeys(("dropout", "drop_path", "label_smoothing"), _UNIT),
    **dict.fromkeys(
        ("weight_decay", "probe_l2", "momentum", "warmup_epochs", "focal_gamma"), _NON_NEGATIVE
    ),
    "step_gamma": _when(lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    "grad_clip": _when(lambda v: v is None or v > 0, "must be positive, or None to disable"),
    "eval_batch_size": _when(lambda v: v is None or v >= 1, "must be at least 1, or None"),
    "patience": _when(lambda v: v is None or v >= 1, "must be at least 1, or None to disable"),
}
"""The range of each `TrainConfig` field that has one; its type comes from its hint."""

HEAD_INERT: tuple[str, ...] = (
    "lr",
    "batch_size",
    "grad_accum",
    "epochs",
    "optimizer",
    "weight_decay",
    "momentum",
    "nesterov",
    "scheduler",
    "warmup_epochs",
    "step_size",
    "step_gamma",
    "grad_clip",
    "patience",
    "dropout",
    "drop_path",
)
"""Fields that do not act on a ``finetune="head"`` trial: its linear head is fitted to
convergence by L-BFGS on cached features of the frozen backbone (`trainer.loop.fit`), so no
optimizer, schedule or epoch count reaches it, and dropout and stochastic depth would only act
on a trunk that no longer runs. What acts: the backbone, its weights, ``image_size``,
``augment``, ``hflip``, ``feature_views``, ``probe_l2`` (the L2 strength), ``loss``,
``label_smoothing``, ``focal_gamma`` and ``class_weights``."""


def field_check(name: str, hint: Any) -> Check:
    """The check of the `TrainConfig` field ``name`` of type ``hint``: its type, then its range."""
    in_range = FIELD_RANGES.get(name, _fine)
    return lambda value: expected(hint) if not fits(value, hint) else in_range(value)


def field_problem(name: str, value: Any, hint: Any) -> str | None:
    """What is wrong with ``value`` for the `TrainConfig` field ``name`` of type ``hint``.

    Returns:
        None, or a sentence without its final full stop: ``epochs=0 must be greater than 0``.
    """
    problem = field_check(name, hint)(value)
    return None if problem is None else f"{name}={value!r} {problem}"


def config_problem(config: Any) -> str | None:
    """The first `field_problem` of a `TrainConfig` (any dataclass with type hints), or None."""
    hints = _hints(type(config))
    for field in dataclasses.fields(config):
        problem = field_problem(field.name, getattr(config, field.name), hints[field.name])
        if problem:
            return problem
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _fine(value: Any) -> None:
    return None


# --- study settings (`search.space.settings` says which setting gets which) -------------------


def int_at_least(low: int) -> Check:
    """An integer (not a bool) of at least ``low``."""

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            return f"must be an integer of at least {low}"
        return None

    return check


def one_of(options: tuple[str, ...]) -> Check:
    """One of the names ``options``."""

    def check(value: Any) -> str | None:
        return None if value in options else "must be one of " + ", ".join(options)

    return check


def fraction(high: float) -> Check:
    """A number in ``[0, high)``."""

    def check(value: Any) -> str | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok and 0 <= value < high else f"must be a number in [0, {high})"

    return check


def optional(check: Check) -> Check:
    """None, or a value that passes ``check``."""
    return lambda value: None if value is None else check(value)


def text(value: Any) -> str | None:
    """A non-empty string."""
    return None if isinstance(value, str) and value else "must be a non-empty string"


def seconds(value: Any) -> str | None:
    """A positive number of seconds."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return None if ok else "must be a positive number of seconds"


def fractions(value: Any) -> str | None:
    """A tuple (or list) of numbers strictly between 0 and 1."""
    ok = isinstance(value, tuple | list) and all(
        isinstance(f, int | float) and not isinstance(f, bool) and 0 < f < 1 for f in value
    )
    return None if ok else "must be a tuple of fractions between 0 and 1, e.g. (1/3,)"


def dicts(value: Any) -> str | None:
    """A list of dicts; what they hold is checked by whoever knows their names."""
    ok = isinstance(value, tuple | list) and all(isinstance(b, dict) for b in value)
    return None if ok else 'must be a list of dicts of parameter values, e.g. [{"lr": 1e-3}]'


def p_value(value: Any) -> str | None:
    """A float strictly between 0 and 1."""
    ok = isinstance(value, float) and 0 < value < 1
    return None if ok else "must be a float in (0, 1)"

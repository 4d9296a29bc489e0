"""Read, validate and use a space file.

A space file is plain Python run with `runpy`; its public module-level names are the settings.
Every problem is reported as ``file:line: sentence`` so the user can go straight to it.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import runpy
import traceback
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_type_hints

from optuna.distributions import CategoricalDistribution, IntDistribution, distribution_to_json

from search.space import Searched, SpaceError
from search.space.baselines import check_baselines
from search.space.settings import SETTINGS, StudySettings
from trainer import checks
from trainer.config import TrainConfig, field_names

# TrainConfig fields that depend on the machine, not on the experiment.
HARDWARE_FIELDS = ("device", "amp", "channels_last", "num_workers", "threads", "eval_batch_size")
_HINTS = get_type_hints(TrainConfig)
_DEFAULTS = TrainConfig().to_dict()


@dataclass(frozen=True)
class Space:
    """A validated space: study settings, fixed config values and searched parameters.

    Attributes:
        path: The space file.
        settings: Every study setting (see `search.space.settings`), defaults filled in.
        fixed: Every `TrainConfig` value no trial samples: the fields the space gives a
            literal value, and the settings every trial's config receives (``metric``,
            ``seed``; see `StudySettings.for_trainer`).
        searched: Searched parameters in an order where conditions come first.
        given: The names the space file or the command line assigned.
    """

    path: Path
    settings: StudySettings
    fixed: Mapping[str, Any]
    searched: Mapping[str, Searched]
    given: frozenset[str] = field(default=frozenset())

    @property
    def name(self) -> str:
        """The default study name: the file's stem."""
        return self.path.stem

    @property
    def conditional(self) -> bool:
        """Whether some parameter exists only under a condition."""
        return any(s.when for s in self.searched.values())

    def sample(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` for every parameter whose conditions hold; returns only those."""
        resolved = {**_DEFAULTS, **self.fixed}
        params = {}
        for name, searched in self.searched.items():
            if searched.active(resolved):
                params[name] = resolved[name] = searched.suggest(trial, name)
        return params

    def config(self, params: Mapping[str, Any]) -> TrainConfig:
        """The `TrainConfig` of a trial: defaults, then `fixed`, then ``params``.

        A ``pretrained`` dict becomes the trial's own backbone's entry, so that each trial's
        stored config names the weights it trained from.
        """
        config = TrainConfig(**{**self.fixed, **params})
        if isinstance(config.pretrained, dict) and config.backbone in config.pretrained:
            return config.replace(pretrained=config.pretrained[config.backbone])
        return config  # a backbone without an entry is refused when the space is loaded

    def backbones(self) -> tuple[str, ...]:
        """Every backbone a trial can pick (one, unless ``backbone`` is searched)."""
        searched = self.searched.get("backbone")
        if searched is not None:
            return tuple(searched.values_to_check())
        return (self.fixed.get("backbone", _DEFAULTS["backbone"]),)

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same study (JSON-safe); hardware and run control excluded.

        ``metric`` and ``seed`` count under ``fixed`` only where the space gives them, as
        when they were `TrainConfig` fields: the fingerprints of existing studies stay valid.
        """
        defaulted = set(self.settings.for_trainer()) - self.given
        return {
            "settings": self.settings.identity(),
            "fixed": {
                k: v
                for k, v in self.fixed.items()
                if k not in HARDWARE_FIELDS and k not in defaulted
            },
            "searched": {
                name: {"distribution": distribution_to_json(s.distribution), "when": s.when}
                for name, s in self.searched.items()
            },
        }

    def fingerprint(self) -> str:
        """A short hash of `identity`."""
        text = json.dumps(self.identity(), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def known_names() -> tuple[str, ...]:
    """Every name a space file may assign."""
    return tuple(dict.fromkeys((*SETTINGS, *field_names())))


def load_space(path: str | Path, overrides: Sequence[str] = ()) -> Space:
    """Read a space file, apply ``key=value`` overrides and validate everything.

    Raises:
        SpaceError: With ``file:line:`` and a sentence saying what to change.
    """
    path = Path(path)
    if not path.is_file():
        raise SpaceError(
            f"Space file '{path}' does not exist; pass the path of a space file such as "
            "spaces/baseline.py."
        )
    values = _run(path)
    lines = _assignment_lines(path)
    where = {name: f"{path}:{lines.get(name, 1)}" for name in values}
    for name, value in parse_overrides(overrides).items():
        values[name], where[name] = value, f"command line '{name}=...'"
    return _validate(path, values, where)


def _run(path: Path) -> dict[str, Any]:
    try:
        namespace = runpy.run_path(str(path), run_name="__hpo_space__")
    except SyntaxError as err:
        raise SpaceError(
            f"{path}:{err.lineno}: syntax error: {err.msg}; correct that line (a space file is "
            "Python)."
        ) from None
    except SpaceError as err:  # a helper such as uniform() refused its arguments
        line, name = _assignment_at(path, _line_in(path, err))
        message = str(err).rstrip(".")
        # The helper cannot know the name it is assigned to; the user looks for that name.
        named = f"{name} = {message}" if name else message
        raise SpaceError(f"{path}:{line}: {named}.") from None
    except Exception as err:  # the file is user code: any error is the user's to fix
        raise SpaceError(f"{path}:{_line_in(path, err)}: {_describe(err)}.") from None
    return {
        name: value
        for name, value in namespace.items()
        if not name.startswith("_") and not _is_machinery(value)
    }


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}".rstrip(".")


def _is_machinery(value: Any) -> bool:
    # Imports and helper functions in a space file are not settings.
    kinds = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
    return isinstance(value, kinds)


def _line_in(path: Path, err: BaseException) -> int:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == path]
    return frames[-1].lineno if frames else 1


def _assignment_at(path: Path, line: int) -> tuple[int, str | None]:
    """The first line and the name of the top-level ``name = helper(...)`` spanning ``line``."""
    for node in ast.parse(path.read_text()).body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            target = node.targets[0] if isinstance(node, ast.Assign) else None
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Call):
                return node.lineno, target.id
    return line, None


def _assignment_lines(path: Path) -> dict[str, int]:
    lines = {}
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            if isinstance(target, ast.Name):
                lines[target.id] = node.lineno
    return lines


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.01", "backbone=resnet18"]`` -> ``{"lr": 0.01, "backbone": "resnet18"}``.

    Values are Python literals where they parse as one (numbers, True, None, quoted strings),
    ``true``/``false`` as booleans, and plain strings otherwise.
    """
    parsed = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise SpaceError(f"Override '{item}' is not key=value; write it like lr=0.01.")
        parsed[name] = _literal(text)
    return parsed


def _literal(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _validate(path: Path, values: dict[str, Any], where: dict[str, str]) -> Space:
    settings: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    searched: dict[str, Searched] = {}
    for name, value in values.items():
        if name in SETTINGS:
            settings[name] = _check_setting(name, value, where[name])
        elif name in _HINTS:
            target = searched if isinstance(value, Searched) else fixed
            target[name] = _check_field(name, value, where[name])
        else:
            raise SpaceError(f"{where[name]}: unknown name '{name}'{_did_you_mean(name)}")
    for name in searched:
        _check_conditions(name, searched, fixed, where[name])
    _check_searched_on_head(fixed, searched, where)
    study = StudySettings(**settings)
    fixed.update(study.for_trainer())
    space = Space(path, study, fixed, _ordered(searched, where), frozenset(values))
    _check_weights_per_backbone(space, where.get("pretrained"))
    if space.settings.baselines:
        # Values that no trial samples: the literal ones and the defaults of the rest.
        known = {k: v for k, v in {**_DEFAULTS, **space.fixed}.items() if k not in searched}
        checked = check_baselines(space.settings.baselines, searched, known, where["baselines"])
        space = replace(space, settings=replace(space.settings, baselines=checked))
    return space


def _check_weights_per_backbone(space: Space, where: str | None) -> None:
    """A ``pretrained`` dict has weights for every backbone the space can pick."""
    pretrained = space.fixed.get("pretrained")
    if not isinstance(pretrained, dict):
        return
    missing = [name for name in space.backbones() if name not in pretrained]
    if missing:
        named = ", ".join(map(repr, missing))
        raise SpaceError(
            f"{where}: pretrained names no weights for backbone {named}; add "
            f"{missing[0]!r}: '/path/file.safetensors' to it, or take {named} out of backbone."
        )


def _did_you_mean(name: str) -> str:
    """The end of an "unknown name" sentence, its final punctuation included."""
    close = difflib.get_close_matches(name, known_names(), n=3, cutoff=0.6)
    # "lr_rate" -> "lr": a known name that the unknown one starts with is a likely meaning.
    close += [k for k in known_names() if len(k) > 1 and name.startswith(k) and k not in close]
    if close:
        return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return "; see the settings listed in README.md."


def _check_setting(name: str, value: Any, where: str) -> Any:
    if isinstance(value, Searched):
        because = SETTINGS[name].fixed_because
        if because:
            example = f"{name} = {SETTINGS[name].default!r}"
            raise SpaceError(
                f"{where}: '{name}' cannot be searched: {because}, so it is fixed for the whole "
                f"study; give it one value, e.g. {example}."
            )
        raise SpaceError(
            f"{where}: '{name}' cannot be searched: it is fixed for the whole study; "
            "give it one value."
        )
    problem = SETTINGS[name].check(value)
    if problem:
        raise SpaceError(f"{where}: {name}={value!r} {problem}.")
    return value


def _check_field(name: str, value: Any, where: str) -> Any:
    if isinstance(value, Searched) and _is_int(name) and not _int_distribution(value):
        raise SpaceError(f"{where}: {name} takes integers; search it with intrange() or choice().")
    candidates = value.values_to_check() if isinstance(value, Searched) else (value,)
    for candidate in candidates:
        # The same check `TrainConfig` makes of its fields (`trainer.checks`).
        problem = checks.field_problem(name, candidate, _HINTS[name])
        if problem:
            raise SpaceError(f"{where}: {problem}.")
    return value


def _is_int(name: str) -> bool:
    return _HINTS[name] is int or _HINTS[name] == (int | None)


def _int_distribution(value: Searched) -> bool:
    if isinstance(value.distribution, CategoricalDistribution):
        return True  # each choice is type-checked on its own
    return isinstance(value.distribution, IntDistribution)


def _check_conditions(
    name: str, searched: Mapping[str, Searched], fixed: Mapping[str, Any], where: str
) -> None:
    for other, allowed in searched[name].when.items():
        if other == name or other not in _HINTS:
            raise SpaceError(
                f"{where}: {name} has a condition on unknown parameter '{other}'"
                f"{_did_you_mean(other)}"
            )
        for value in allowed:
            _check_condition_value(name, other, value, searched.get(other), where)


def _check_condition_value(
    name: str, other: str, value: Any, other_searched: Searched | None, where: str
) -> None:
    if other_searched is None:
        possible = checks.fits(value, _HINTS[other])
    elif isinstance(other_searched.distribution, CategoricalDistribution):
        possible = value in other_searched.distribution.choices
    else:
        raise SpaceError(
            f"{where}: {name} has a condition on '{other}', which is searched over a range; "
            "conditions can only name a choice() parameter or a fixed value."
        )
    if not possible:
        raise SpaceError(
            f"{where}: {name} has a condition {other}={value!r}, a value '{other}' can never "
            "take; use one of its values."
        )


def _ordered(searched: dict[str, Searched], where: dict[str, str]) -> dict[str, Searched]:
    """Searched parameters ordered so that every condition is resolved before it is needed."""
    ordered: dict[str, Searched] = {}
    pending = dict(searched)
    while pending:
        ready = [
            n for n, s in pending.items() if all(o in ordered or o not in pending for o in s.when)
        ]
        if not ready:
            cycle = ", ".join(pending)
            raise SpaceError(f"{where[next(iter(pending))]}: conditions form a cycle ({cycle}).")
        for name in ready:
            ordered[name] = pending.pop(name)
    return ordered


def _check_searched_on_head(
    fixed: dict[str, Any], searched: dict[str, Searched], where: dict[str, str]
) -> None:
    """Refuse to search what cannot act when every trial fits a converged linear head."""
    if fixed.get("finetune", _DEFAULTS["finetune"]) != "head":
        return  # full or probe_full, or searched: the parameter acts on some trials
    inert = [
        name
        for name in searched
        if name in checks.HEAD_INERT and "head" in searched[name].when.get("finetune", ("head",))
    ]
    if inert:
        name = inert[0]
        raise SpaceError(
            f"{where[name]}: {name} is searched, but with finetune='head' every trial fits its "
            f"linear head to convergence on cached features, so {name} does not act; fix it "
            "to one value or remove it (probe_l2, loss, label_smoothing, augment and "
            "feature_views act on head trials)."
        )

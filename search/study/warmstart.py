"""``hpo run SPACE --warm-start OTHER``: start a study with the finished trials of another.

A refined space (narrower ranges, a parameter now fixed, one more searched) starts informed:
every finished trial of the other study whose configuration the new space can express is
copied with `optuna.Study.add_trial`, its value, fold scores and outcome with it (a pruned
trial's rung values moved onto this study's rungs, `moved_steps`). Copying is
refused when scores would not mean the same: other data, other folds, or a value fixed
differently in both spaces (epochs, image size, metric, ...).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial
from rich.console import Console

from search import keys
from search.keys import (
    BASELINE,
    DIVERGED,
    EPOCHS,
    FOLD_SCORES,
    PRUNED_AT,
    PRUNED_REASON,
    SCORE_STD,
    SECONDS,
    SURPLUS,
    WARM_START_FROM,
    WARM_STARTED,
)
from search.space.spacefile import HARDWARE_FIELDS, Space
from search.study.folder import check_owner, trial_dir
from search.study.pruning import Rungs
from search.study.storage import StudyError, StudyPlace, load_hpo_study
from trainer.config import TrainConfig

_KEPT = (FOLD_SCORES, SCORE_STD, EPOCHS, SECONDS, PRUNED_REASON, PRUNED_AT, DIVERGED, "config")
_DEFAULTS = TrainConfig().to_dict()


@dataclass(frozen=True)
class WarmStart:
    """What a warm start did: ``copied`` maps the other study's trial numbers to this one's."""

    source: str
    copied: dict[int, int]
    skipped: int
    already: bool = False


def _jsonish(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _resolved_fixed(fixed: dict[str, Any], searched: set[str]) -> dict[str, Any]:
    values = {**_DEFAULTS, **fixed}
    return {
        k: _jsonish(v) for k, v in values.items() if k not in searched and k not in HARDWARE_FIELDS
    }


def check_source(study: optuna.Study, source: optuna.Study, name: str, space: Space) -> None:
    """The other study measured scores as this one will, or a `StudyError` that says why not."""
    attrs, mine = source.user_attrs, study.user_attrs
    if attrs.get(keys.CONTENT_ID_ATTR) != mine.get(keys.CONTENT_ID_ATTR):
        raise StudyError(
            f"Study '{name}' was run on other data (the files, labels or groups differ); "
            "--warm-start needs a study of the same data."
        )
    if attrs.get(keys.SPLITS_ID_ATTR) != mine.get(keys.SPLITS_ID_ATTR):
        raise StudyError(
            f"Study '{name}' used other folds (folds, holdout or seed differ); --warm-start "
            "needs a study whose folds are the same, or its scores would not compare."
        )
    if source.direction != study.direction:
        raise StudyError(f"Study '{name}' optimises in the other direction; pick another study.")
    old_identity = attrs.get(keys.IDENTITY_ATTR, {})
    old = _resolved_fixed(old_identity.get("fixed", {}), set(old_identity.get("searched", {})))
    new = _resolved_fixed(space.fixed, set(space.searched))
    both = sorted(old.keys() & new.keys())
    differ = [f"{k}={old[k]!r} there, {new[k]!r} here" for k in both if old[k] != new[k]]
    if differ:
        raise StudyError(
            f"Study '{name}' trained with other fixed values ({'; '.join(differ)}), so its "
            "scores would not compare; warm-start from a study with the same fixed values."
        )


def translate(trial: FrozenTrial, old_fixed: dict[str, Any], space: Space) -> dict | None:
    """The new space's parameters for ``trial``, or None if the new space cannot express it."""
    values = {**_DEFAULTS, **old_fixed, **trial.params}
    new_fixed = _resolved_fixed(space.fixed, set(space.searched))
    if any(_jsonish(values.get(k)) != v for k, v in new_fixed.items()):
        return None  # it searched a value this space fixes otherwise
    params: dict[str, Any] = {}
    resolved = {**_DEFAULTS, **space.fixed}
    for name, searched in space.searched.items():
        if not searched.active(resolved):
            continue
        value, dist = values.get(name), searched.distribution
        try:
            if value is None or not dist._contains(dist.to_internal_repr(value)):
                return None
        except (ValueError, TypeError):
            return None
        params[name] = resolved[name] = value
    return params


def moved_steps(values: dict[int, float], epochs: int, old: Rungs, new: Rungs) -> dict[int, float]:
    """A trial's rung values, moved from the steps of rungs ``old`` to those of ``new``.

    A value after whole folds keeps its number of folds. A value at an epoch of the first
    fold (of ``epochs``) goes to the first rung of ``new`` at that epoch or later: at a later
    one it understates the trial, so TPE ranks it by the rung it reached without flattering
    it, and the pruner's peers there only become more lenient. A value that no rung of
    ``new`` can take is dropped.
    """
    epoch_of = {step: epoch for epoch, step in old.epoch_steps(epochs).items()}
    targets = sorted(new.epoch_steps(epochs).items())
    moved: dict[int, float] = {}
    for step, value in sorted(values.items()):
        if old.folds_done(step):
            moved[new.fold_step(old.folds_done(step))] = value
            continue
        later = [t for epoch, t in targets if step in epoch_of and epoch >= epoch_of[step]]
        if later:
            moved.setdefault(later[0], value)
    return moved


def _copy(trial: FrozenTrial, params: dict, space: Space, name: str, rungs: Rungs) -> Any:
    attrs = {k: trial.user_attrs[k] for k in _KEPT if k in trial.user_attrs}
    attrs[WARM_START_FROM] = f"{name}#{trial.number}"
    complete = trial.state == TrialState.COMPLETE
    return create_trial(
        state=trial.state,
        value=trial.value if complete else None,
        params=params,
        distributions={k: space.searched[k].distribution for k in params},
        user_attrs=attrs,
        intermediate_values=moved_steps(
            dict(trial.intermediate_values),
            int(attrs.get("config", {}).get("epochs", space.config(params).epochs)),
            rungs,
            Rungs.of(space.settings),
        ),
    )


def warm_start(study: optuna.Study, source: optuna.Study, name: str, space: Space) -> WarmStart:
    """Copy every finished trial of ``source`` (study ``name``) that ``space`` can express.

    Raises:
        StudyError: The other study's scores would not compare (see `check_source`).
    """
    done = dict(study.user_attrs.get(WARM_STARTED, {}))
    if name in done:
        return WarmStart(name, {}, 0, already=True)
    check_source(study, source, name, space)
    identity = source.user_attrs.get(keys.IDENTITY_ATTR, {})
    stored = identity.get("settings", {}).get("pruner_epoch_rungs")
    # Rung steps mean the same only for the same rungs; others are moved (see `moved_steps`).
    rungs = Rungs(tuple(stored), space.settings.folds) if stored else Rungs.of(space.settings)
    old_fixed = dict(identity.get("fixed", {}))
    finished = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    copied, skipped = {}, 0
    for trial in (t for t in finished if not t.user_attrs.get(SURPLUS)):
        params = translate(trial, old_fixed, space)
        if params is None:
            skipped += 1
            continue
        study.add_trial(_copy(trial, params, space, name, rungs))
        copied[trial.number] = study.get_trials(deepcopy=False)[-1].number
    study.set_user_attr(WARM_STARTED, {**done, name: len(copied)})
    return WarmStart(name, copied, skipped)


# --- what a study starts from -----------------------------------------------------------------


def seed_trials(
    study: optuna.Study,
    space: Space,
    place: StudyPlace,
    console: Console,
    *,
    warm_start: str | None,
    storage: str | None,
) -> None:
    """What a study starts from: the finished trials of study ``warm_start`` (in ``storage``,
    None for the default place), then the space's baselines."""
    if warm_start:
        copy_trials(warm_start, storage, study, space, place, console)
    queued = enqueue_baselines(study, space.settings.baselines)
    if queued:
        console.print(f"Queued {queued} baseline configurations of the space file to run first.")


def enqueue_baselines(study: optuna.Study, baselines: Sequence[dict[str, Any]]) -> int:
    """Queue ``baselines`` to run next; one the study already has (any state) is skipped."""
    waiting = (TrialState.WAITING,)
    before = len(study.get_trials(deepcopy=False, states=waiting))
    for index, params in enumerate(baselines):
        study.enqueue_trial(dict(params), user_attrs={BASELINE: index}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False, states=waiting)) - before


def copy_trials(
    name: str,
    storage: str | None,
    study: optuna.Study,
    space: Space,
    place: StudyPlace,
    console: Console,
) -> None:
    """``--warm-start NAME``: copy that study's finished trials (and checkpoints) into this one.

    Raises:
        StudyError: No such study, this study itself, or one whose scores would not compare.
    """
    source_place = StudyPlace.of(name, storage)  # the same storage as this study's
    if source_place.name == place.name:
        raise StudyError(f"--warm-start {name} names the study being run; name another study.")
    source = load_hpo_study(source_place)
    check_owner(source, source_place)  # its folder's checkpoints must be its own
    done = warm_start(study, source, name, space)
    if done.already:
        console.print(f"Warm start: the trials of study '{name}' were copied in an earlier run.")
        return
    for old, new in done.copied.items():
        folder = trial_dir(source_place.folder, old)
        if folder.is_dir():  # the other study's best trials keep checkpoints: export can use them
            shutil.copytree(folder, trial_dir(place.folder, new), dirs_exist_ok=True)
    console.print(
        f"Warm start: copied {len(done.copied)} finished trials of study '{name}' "
        f"({done.skipped} lie outside this space); they count toward --trials."
    )

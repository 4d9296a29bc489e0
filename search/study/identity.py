"""Create a study, or load it and check that it is the same study (its identity, on resume).

What a study stores besides Optuna's trials (as study user attributes, so that every worker on
every machine reads the same): the space's identity, the data's content id, the class names and
the fold id of every sample.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from rich.console import Console

from search import keys
from search.console import make_console
from search.space.spacefile import Space
from search.study.pruning import Rungs, build_pruner
from search.study.samplers import build_sampler
from search.study.splits import new_folds, resolve_holdout, splits_id
from search.study.storage import StudyError, StudyPlace
from trainer.config import DIRECTIONS
from trainer.sources import ImageTable


def open_study(
    storage: BaseStorage,
    place: StudyPlace,
    space: Space,
    table: ImageTable,
    *,
    process_seed: int,
) -> optuna.Study:
    """Create the study in ``storage``, or load it and check that it is the same study.

    Raises:
        StudyError: If the stored study was created with another space or other data.
    """
    settings = space.settings
    pruner = build_pruner(
        settings.pruner,
        rungs=Rungs.of(settings),
        min_peers=settings.pruner_startup_trials,
        p=settings.pruner_p,
    )
    direction = DIRECTIONS[space.settings.metric]
    study = optuna.create_study(
        study_name=place.name,
        storage=storage,
        sampler=build_sampler(
            settings.sampler,
            seed=space.settings.seed,
            process_seed=process_seed,
            grouped=space.conditional,
            space={name: s.distribution for name, s in space.searched.items()},
        ),
        pruner=pruner,
        direction=direction,
        load_if_exists=True,
    )
    _claim_or_check(study, place, space, table)
    return study


def check_study(storage: BaseStorage, place: StudyPlace, space: Space, table: ImageTable) -> None:
    """Before any work: the study can be created or resumed in ``storage`` as asked.

    Nothing is written to the study: a stored study must match ``space`` and ``table``, and
    for a new one the data must split into the space's folds.

    Raises:
        StudyError: The stored study has another space or data.
        DataError: A class (or the groups) is too small for the folds of a new study.
    """
    try:
        stored = storage.get_study_user_attrs(storage.get_study_id_from_name(place.name))
    except KeyError:
        stored = {}
    if keys.FINGERPRINT_ATTR in stored:
        _check_same(stored, place, space, table)
    else:
        new_folds(space, table)


def _claim_or_check(
    study: optuna.Study, place: StudyPlace, space: Space, table: ImageTable
) -> None:
    stored = study.user_attrs
    if keys.FINGERPRINT_ATTR not in stored:
        _claim(study, space, table)
        return
    _check_same(stored, place, space, table)


def _check_same(stored: dict[str, Any], place: StudyPlace, space: Space, table: ImageTable) -> None:
    if stored[keys.FINGERPRINT_ATTR] != space.fingerprint():
        changed = _changed_keys(stored.get(keys.IDENTITY_ATTR, {}), space.identity())
        raise StudyError(
            f"Study '{place.name}' was created with a different search space ({changed} "
            "changed); restore the space, or pass --study NEW_NAME to start a new study."
        )
    if stored[keys.CONTENT_ID_ATTR] != table.content_id:
        raise StudyError(
            f"Study '{place.name}' was created with other data than '{table.source}' (the files, "
            "labels or groups differ); point at the same data, or pass --study NEW_NAME."
        )


def _claim(study: optuna.Study, space: Space, table: ImageTable) -> None:
    fold_of = new_folds(space, table)
    attrs = {
        keys.IDENTITY_ATTR: space.identity(),
        keys.SPACE_SOURCE_ATTR: space.path.read_text(),
        keys.CONTENT_ID_ATTR: table.content_id,
        keys.CLASSES_ATTR: list(table.classes),
        keys.FOLD_OF_ATTR: fold_of.tolist(),
        keys.SPLITS_ID_ATTR: splits_id(fold_of),
        keys.DATA_ATTR: table.source,
        keys.STUDY_UID_ATTR: uuid.uuid4().hex,  # binds studies/<name>/ (search.study.folder)
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    # Written last: its presence means the study is fully set up.
    study.set_user_attr(keys.FINGERPRINT_ATTR, space.fingerprint())


def _changed_keys(before: dict[str, Any], after: dict[str, Any]) -> str:
    changed = []
    for part in ("settings", "fixed", "searched"):
        old, new = before.get(part, {}), after.get(part, {})
        changed += [k for k in sorted(set(old) | set(new)) if old.get(k) != _jsonish(new.get(k))]
    return ", ".join(dict.fromkeys(changed)) or "its layout"


def _jsonish(value: Any) -> Any:
    # Stored identities went through JSON: tuples became lists.
    return json.loads(json.dumps(value, default=list)) if value is not None else None


# Trials that make a study worth keeping as it is (see `forget_unfinished`).
_KEPT = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def as_stored(
    storage: BaseStorage,
    place: StudyPlace,
    space: Space,
    table: ImageTable,
    console: Console | None,
) -> Space:
    """``space`` with the settings the study stores, after `forget_unfinished`.

    The holdout a study resolved, and every study setting the space leaves to its default
    (see `keep_created_settings`).
    """
    kept, changed = keep_created_settings(storage, place, space)
    resolved = resolve_holdout(storage, place, kept, table)
    if not forget_unfinished(storage, place, resolved, table, console):
        if changed:
            (console or make_console()).print(changed)
        return resolved
    return resolve_holdout(storage, place, space, table)  # a new study's default


def keep_created_settings(
    storage: BaseStorage, place: StudyPlace, space: Space
) -> tuple[Space, str | None]:
    """``space`` with each study setting it leaves to the default as the stored study has it.

    A study keeps the sampler and pruner settings it was created with: when a later hpo changes
    a default, a study that left that setting to the default resumes as it was instead of being
    refused as another search space. A setting the space file or the command line gives is
    compared as before. The holdout has its own rule (`resolve_holdout`).

    Returns:
        The space, and a sentence naming what was kept (None when nothing was).
    """
    try:
        stored = storage.get_study_user_attrs(storage.get_study_id_from_name(place.name))
    except KeyError:
        return space, None
    created = stored.get(keys.IDENTITY_ATTR, {}).get("settings", {})
    current = space.settings.identity()
    kept = {}
    for name, value in created.items():
        if name in space.given or name == "holdout" or name not in current:
            continue
        if value != _jsonish(current[name]):
            kept[name] = tuple(value) if isinstance(value, list) else value
    if not kept:
        return space, None
    shown = ", ".join(f"{k} = {v!r} (the default is now {current[k]!r})" for k, v in kept.items())
    said = (
        f"Study '{place.name}' keeps the settings it was created with: {shown}; a new study "
        "(--study NEW_NAME) takes the new defaults."
    )
    return replace(space, settings=replace(space.settings, **kept)), said


def forget_unfinished(
    storage: BaseStorage,
    place: StudyPlace,
    space: Space,
    table: ImageTable,
    console: Console | None,
) -> bool:
    """Delete the stored study if it has another space or data and no trial finished or running.

    A study's identity (space, data, folds) is stored when it is created, before its first
    trial. A start that failed before any trial finished (a wrong setting found in trial 0)
    would otherwise lock it, and the corrected command would be refused as "a different search
    space"; the failed trials of that start are about a setup the user has since changed.

    Returns:
        Whether a study was deleted.
    """
    try:
        study_id = storage.get_study_id_from_name(place.name)
    except KeyError:
        return False
    stored = storage.get_study_user_attrs(study_id)
    if keys.FINGERPRINT_ATTR not in stored or (
        stored[keys.FINGERPRINT_ATTR] == space.fingerprint()
        and stored.get(keys.CONTENT_ID_ATTR) == table.content_id
    ):
        return False
    if storage.get_all_trials(study_id, deepcopy=False, states=_KEPT):
        return False
    optuna.delete_study(study_name=place.name, storage=storage)
    (console or make_console()).print(
        f"Study '{place.name}' had no finished trial: it starts again with this space and data."
    )
    return True

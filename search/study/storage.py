"""Open or create a study: storage, sampler, pruner, and the identity checked on resume.

What a study stores besides Optuna's trials (as study user attributes, so that every worker on
every machine reads the same): the space's identity, the data's content id, the class names and
the fold id of every sample.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search import keys
from search.space.spacefile import Space
from search.study.pruning import Rungs, build_pruner
from search.study.resilient import PATIENCE, ResilientStorage
from search.study.samplers import build_sampler
from search.study.splits import assign_folds
from trainer.config import DIRECTIONS
from trainer.errors import UserError
from trainer.sources import ImageTable

STUDIES = Path("studies")
# The holdout a space leaves to the default (``holdout = None``): a tenth of data this large.
DEFAULT_HOLDOUT = 0.1
HOLDOUT_MIN_IMAGES = 1000


class StudyError(UserError):
    """A study that cannot be opened or resumed as asked."""


@dataclass(frozen=True)
class StudyPlace:
    """Where a study lives: its name, its folder on this machine and its storage URL."""

    name: str
    folder: Path
    storage_url: str

    @classmethod
    def of(cls, name: str, storage_url: str | None = None) -> StudyPlace:
        """The default place of study ``name``: studies/<name>/ with a SQLite file inside."""
        if not name or "/" in name or name.startswith("."):
            raise StudyError(f"Study name '{name}' is not usable; use letters, digits, - and _.")
        folder = (STUDIES / name).resolve()
        return cls(name, folder, storage_url or f"sqlite:///{folder / 'study.db'}")

    @property
    def export_dir(self) -> Path:
        """Where the best ensemble is exported."""
        return self.folder / "export"


def open_storage(
    url: str, *, heartbeat: int | None = None, create: bool = True, patience: float = PATIENCE
) -> ResilientStorage:
    """An RDB storage with heartbeats: a trial whose process died is failed and retried.

    Once open, every call waits up to ``patience`` seconds for a database that goes away (see
    `search.study.resilient`); opening it does not wait, so a wrong URL fails at once.

    Raises:
        StudyError: If the URL is malformed or the database cannot be reached.
    """
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.exists():
            raise StudyError(f"No study storage at '{path}'; check the study name or --storage.")
        _make_folder(path.parent)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several workers share one SQLite file: wait a while for locks; a lock held longer
        # is waited out (up to ``patience``) with one line, like a database that went away.
        kwargs = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    elif url.startswith("postgresql"):
        # Pre-ping replaces connections a server restart closed; keepalives notice a server
        # that vanished without closing them (a fail-over, a dead node).
        kwargs = {"pool_pre_ping": True, "connect_args": _POSTGRES_CONNECT}
    beat = {}
    if heartbeat:
        beat = {
            "heartbeat_interval": heartbeat,
            "grace_period": max(2 * heartbeat, heartbeat + 2),
            "heartbeat_stale_trial_callback": retry_stale_trial,
        }
    try:
        backend = _connect(url, kwargs, beat)
    except ImportError as err:  # Optuna's wording hides which module is missing
        raise StudyError(
            f"The database driver for the study storage '{redact_url(url)}' is not installed "
            f"({_first_line(err.__cause__ or err)}); install it (pip install 'hpo[postgres]', "
            "i.e. psycopg 3, for PostgreSQL) or pass another --storage URL."
        ) from None
    except Exception as err:  # SQLAlchemy raises many kinds for bad URLs and dead servers
        raise StudyError(
            f"Cannot open the study storage '{redact_url(url)}' ({_first_line(err)}); check the "
            "URL (e.g. postgresql://user@host:5432/db) and that the database server is running."
        ) from None
    return ResilientStorage(backend, name=redact_url(url), patience=patience)


# Told about every trial whose process died, after its retry is queued: e.g. tracking closes
# the trial's MLflow run. Registered from above (the study layer knows nothing of MLflow).
StaleTrialListener = Callable[[optuna.Study, FrozenTrial], None]
_STALE_LISTENERS: list[StaleTrialListener] = []


def on_stale_trial(listener: StaleTrialListener) -> None:
    """Call ``listener(study, trial)`` for each trial Optuna's heartbeat fails in this process.

    Registering the same listener again does nothing. A listener must not raise: it runs inside
    Optuna's `fail_stale_trials`, before this process's next trial.
    """
    if listener not in _STALE_LISTENERS:
        _STALE_LISTENERS.append(listener)


def retry_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose process died: Optuna queues its parameters again; listeners are told.

    Called by `optuna.storages.fail_stale_trials` in whichever process notices first.
    """
    _RETRY(study, trial)
    for listener in list(_STALE_LISTENERS):
        listener(study, trial)


_RETRY = RetryHeartbeatStaleTrialCallback(max_retry=2)
SQLITE_BUSY_SECONDS = 10
_POSTGRES_CONNECT = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = "a file has that name" if isinstance(err, FileExistsError) else err.strerror
        raise StudyError(
            f"Cannot create the folder {folder} for the SQLite study storage "
            f"({reason or err}); pass a --storage URL in a writable folder."
        ) from None


def _connect(url: str, engine_kwargs: dict[str, Any], beat: dict[str, Any]) -> RDBStorage:
    """`RDBStorage`, retried while another worker is creating the same tables."""
    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
        except Exception as err:
            if not _creation_race(err):
                raise
            time.sleep(0.5 + attempt)
    return RDBStorage(url, engine_kwargs=engine_kwargs, **beat)


def _creation_race(err: Exception) -> bool:
    """Whether ``err`` is another process creating the same storage tables at the same time."""
    text = str(err)
    return any(s in text for s in ("UNIQUE constraint", "already exists", "database is locked"))


def redact_url(url: str) -> str:
    """A database URL with its password hidden (``postgresql://user:***@host/db``).

    A string SQLAlchemy cannot read as a URL is returned as it is.
    """
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    # SQLAlchemy prefixes the driver's exception class: "(psycopg.OperationalError) ...".
    return (re.sub(r"^\([\w.]+\) ", "", text[0]) if text else type(err).__name__).rstrip(".")


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


def resolve_holdout(
    storage: BaseStorage, place: StudyPlace, space: Space, table: ImageTable
) -> Space:
    """``space`` with its default ``holdout`` (None) replaced by the value the study uses.

    A stored study keeps the holdout it was created with; a new one gets `DEFAULT_HOLDOUT` when
    the data has at least `HOLDOUT_MIN_IMAGES` images, else 0. The resolved value is part of the
    identity, so the fingerprint stays that of the study.
    """
    if space.settings.holdout is not None:
        return space
    try:
        stored = storage.get_study_user_attrs(storage.get_study_id_from_name(place.name))
    except KeyError:
        stored = {}
    value = stored.get(keys.IDENTITY_ATTR, {}).get("settings", {}).get("holdout")
    value = default_holdout(len(table)) if value is None else value
    return replace(space, settings=replace(space.settings, holdout=value))


def default_holdout(images: int) -> float:
    """The holdout fraction of a new study on ``images`` images that left it to the default."""
    return DEFAULT_HOLDOUT if images >= HOLDOUT_MIN_IMAGES else 0.0


def holdout_note(space: Space, images: int) -> str | None:
    """What to tell the user when the study has no holdout (its scores are then optimistic)."""
    if space.settings.holdout:
        return None
    return (
        f"No holdout ({images} images; hpo keeps one by default from {HOLDOUT_MIN_IMAGES:,}): "
        "every score shown is cross-validated and optimistic, because the best epochs and the "
        "best trials are chosen on those same folds. For an honest score on never-seen images, "
        "set holdout = 0.1 in the space file and run it as a new study (--study NEW_NAME)."
    )


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


def new_folds(space: Space, table: ImageTable) -> np.ndarray:
    """The fold id of every sample for a new study of ``space`` on ``table``.

    Raises:
        DataError: A class (or the groups) is too small for the folds.
    """
    return assign_folds(
        table.labels,
        table.groups,
        table.classes,
        folds=space.settings.folds,
        holdout=_holdout(space, table),
        seed=space.settings.seed,
    )


def _holdout(space: Space, table: ImageTable) -> float:
    value = space.settings.holdout
    return default_holdout(len(table)) if value is None else value


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


def splits_id(fold_of: np.ndarray) -> str:
    """A short hash of the fold assignment (logged with every trial)."""
    return hashlib.sha256(np.asarray(fold_of, dtype=np.int64).tobytes()).hexdigest()[:12]


def _changed_keys(before: dict[str, Any], after: dict[str, Any]) -> str:
    changed = []
    for part in ("settings", "fixed", "searched"):
        old, new = before.get(part, {}), after.get(part, {})
        changed += [k for k in sorted(set(old) | set(new)) if old.get(k) != _jsonish(new.get(k))]
    return ", ".join(dict.fromkeys(changed)) or "its layout"


def _jsonish(value: Any) -> Any:
    # Stored identities went through JSON: tuples became lists.
    return json.loads(json.dumps(value, default=list)) if value is not None else None


def load_hpo_study(place: StudyPlace) -> optuna.Study:
    """Load a study that `hpo run` created.

    Raises:
        StudyError: No such study, or one whose setup `hpo run` did not finish.
    """
    storage = open_storage(place.storage_url, create=False)
    try:
        study = optuna.load_study(study_name=place.name, storage=storage)
    except KeyError:
        raise StudyError(
            f"No study named '{place.name}' in {place.storage_url}; pass the name `hpo run` "
            "printed, and --storage if the study is not in the default place."
        ) from None
    if keys.FINGERPRINT_ATTR not in study.user_attrs:
        raise StudyError(
            f"Study '{place.name}' was not set up by `hpo run`; run `hpo run` on it first."
        )
    return study


def stored_folds(study: optuna.Study) -> np.ndarray:
    """The fold id of every sample, as stored when the study was created."""
    return np.asarray(study.user_attrs[keys.FOLD_OF_ATTR], dtype=np.int64)

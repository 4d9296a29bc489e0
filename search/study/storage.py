"""Where a study lives and how its storage is opened: SQLite or PostgreSQL, retried, with
heartbeats, and the study loaded back for readers (`hpo status`, the export).

Creating a study and checking on resume that it is the same study: `search.study.identity`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search import keys
from search.study.resilient import PATIENCE, ResilientStorage
from trainer.errors import UserError

STUDIES = Path("studies")


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

"""Open or create a study: storage, sampler, pruner, and the identity checked on resume.

What a study stores besides Optuna's trials (as study user attributes, so that every worker on
every machine reads the same): the space's identity, the data's content id, the class names and
the fold id of every sample.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from search.pruning import build_pruner
from search.samplers import build_sampler
from search.spacefile import Space
from search.splits import assign_folds
from trainer import metrics
from trainer.errors import UserError
from trainer.sources import ImageTable

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


def open_storage(url: str, *, heartbeat: int | None = None, create: bool = True) -> RDBStorage:
    """An RDB storage with heartbeats: a trial whose process died is failed and retried.

    Raises:
        StudyError: If the URL is malformed or the database cannot be reached.
    """
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.exists():
            raise StudyError(f"No study storage at '{path}'; check the study name or --storage.")
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several workers share one SQLite file: wait for locks instead of failing.
        kwargs = {"connect_args": {"timeout": 120}}
    elif url.startswith("postgresql"):
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    beat = {}
    if heartbeat:
        beat = {
            "heartbeat_interval": heartbeat,
            "grace_period": max(2 * heartbeat, heartbeat + 2),
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=2),
        }
    try:
        return _connect(url, kwargs, beat)
    except Exception as err:  # SQLAlchemy raises many kinds for bad URLs and dead servers
        raise StudyError(
            f"Cannot open the study storage '{_redact(url)}' ({_first_line(err)}); check the "
            "URL (e.g. postgresql://user@host:5432/db) and that the database server is running."
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


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        rest = f"{user}:***@{rest.split('@', 1)[1]}"
    return scheme + sep + rest


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__).rstrip(".")


def open_study(
    place: StudyPlace,
    space: Space,
    table: ImageTable,
    *,
    process_seed: int,
    heartbeat: int | None,
) -> optuna.Study:
    """Create the study, or load it and check that it is the same study.

    Raises:
        StudyError: If the stored study was created with another space or other data.
    """
    storage = open_storage(place.storage_url, heartbeat=heartbeat)
    settings = space.settings
    pruner = build_pruner(
        settings["pruner"],
        startup_trials=settings["pruner_startup_trials"],
        warmup_epochs=settings["pruner_warmup_epochs"],
        p_threshold=settings["pruner_p"],
    )
    direction = metrics.DIRECTIONS[space.config({}).metric]
    study = optuna.create_study(
        study_name=place.name,
        storage=storage,
        sampler=build_sampler(
            settings["sampler"],
            seed=space.config({}).seed,
            process_seed=process_seed,
            grouped=space.conditional,
        ),
        pruner=pruner,
        direction=direction,
        load_if_exists=True,
    )
    _claim_or_check(study, place, space, table)
    return study


def _claim_or_check(
    study: optuna.Study, place: StudyPlace, space: Space, table: ImageTable
) -> None:
    stored = study.user_attrs
    if "hpo.fingerprint" not in stored:
        _claim(study, space, table)
        return
    if stored["hpo.fingerprint"] != space.fingerprint():
        changed = _changed_keys(stored.get("hpo.identity", {}), space.identity())
        raise StudyError(
            f"Study '{place.name}' was created with a different search space ({changed} "
            "changed); restore the space, or pass --study NEW_NAME to start a new study."
        )
    if stored["hpo.content_id"] != table.content_id:
        raise StudyError(
            f"Study '{place.name}' was created with other data than '{table.source}' (the files, "
            "labels or groups differ); point at the same data, or pass --study NEW_NAME."
        )


def _claim(study: optuna.Study, space: Space, table: ImageTable) -> None:
    settings = space.settings
    fold_of = assign_folds(
        table.labels,
        table.groups,
        table.classes,
        folds=settings["folds"],
        holdout=settings["holdout"],
        seed=space.config({}).seed,
    )
    attrs = {
        "hpo.identity": space.identity(),
        "hpo.space_source": space.path.read_text(),
        "hpo.content_id": table.content_id,
        "hpo.classes": list(table.classes),
        "hpo.fold_of": fold_of.tolist(),
        "hpo.splits_id": splits_id(fold_of),
        "hpo.data": table.source,
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    # Written last: its presence means the study is fully set up.
    study.set_user_attr("hpo.fingerprint", space.fingerprint())


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


def stored_folds(study: optuna.Study) -> np.ndarray:
    """The fold id of every sample, as stored when the study was created."""
    return np.asarray(study.user_attrs["hpo.fold_of"], dtype=np.int64)

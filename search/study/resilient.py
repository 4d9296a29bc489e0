"""A study storage that waits out a database that goes away, instead of ending the worker.

A database restart, a fail-over or a SQLite file locked for longer than its busy timeout makes
every storage call of every worker fail at once. `ResilientStorage` wraps Optuna's storage and
retries each call with backoff while the failure is an outage (not a bad request), for up to
``patience`` seconds from the moment the database went away. It prints one line when the
database goes away and one when it is back; past ``patience`` it raises `StorageUnavailable`,
which ends the worker with that one line and exit status 2 (the next run continues the study).

Two calls are not safe to repeat blindly, since a commit can succeed while its answer is lost:
- creating a trial: every new trial carries a unique token (a trial system attribute); a retry
  first looks for a trial with its token, and stray copies (Optuna retries creation itself)
  are failed and hidden at once, so none stays RUNNING without a worker;
- finishing a trial: a retry that finds the trial already in the state it asked for succeeded.
"""

from __future__ import annotations

import copy
import logging
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Container, Sequence
from datetime import datetime
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage, _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa_exc

from search.keys import CREATE_TOKEN, SURPLUS
from trainer.errors import UserError

PATIENCE = 120.0
_FIRST_WAIT, _LONGEST_WAIT = 0.5, 5.0
# SQLite errors that mean "busy, try later"; any other (no such table, ...) is a real error.
_SQLITE_BUSY = ("database is locked", "database table is locked", "unable to open database")

T = TypeVar("T")


class StorageUnavailable(UserError):
    """The study storage stayed unreachable for longer than ``storage_patience``."""


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` says the database is unreachable or busy (worth waiting for)."""
    for link in _chain(err):
        orig = getattr(link, "orig", None)
        if isinstance(link, sqlite3.Error) or isinstance(orig, sqlite3.Error):
            text = str(orig if orig is not None else link)
            return any(s in text for s in _SQLITE_BUSY)
        if isinstance(link, sa_exc.DBAPIError) and link.connection_invalidated:
            return True
        if isinstance(link, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
            return True
    return False


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = err
    while link is not None and link not in seen:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


def reason(err: BaseException) -> str:
    """The database's own words for ``err``, on one line (no SQL, no driver class)."""
    words = str(err)
    for link in _chain(err):
        orig = getattr(link, "orig", None)
        if orig is not None:
            words = str(orig)
    lines = [line.strip() for line in words.strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__).rstrip(".")


def say(line: str) -> None:
    """Print one line on stderr (what a worker's log and the terminal show)."""
    print(line, file=sys.stderr, flush=True)


class Outage:
    """Whether the storage is away, since when, and the one line said each way.

    Shared by every thread of a process (the trial loop and its heartbeat), so an outage is
    announced once and its patience runs from its first failed call.
    """

    def __init__(self, name: str, patience: float, tell: Callable[[str], None] = say) -> None:
        self.name, self.patience, self.tell = name, patience, tell
        self.lock = threading.Lock()
        self.since: float | None = None
        self.ended = float("-inf")  # when the last outage ended (monotonic seconds)
        self.given_up: str | None = None

    def failed(self, err: BaseException, began: float) -> float:
        """Record a call that began at ``began`` and failed; returns the seconds left to wait.

        The outage starts when its first failed call began: a SQLite call waits out its busy
        timeout before it fails, and that wait counts.

        Raises:
            StorageUnavailable: Once the storage has been away for ``patience`` seconds (and
                for every call after that: this process is stopping).
        """
        with self.lock:
            if self.given_up is not None:
                raise StorageUnavailable(self.given_up)
            if self.since is None:
                self.since = began
                self.tell(
                    f"The study storage {self.name} is not answering ({reason(err)}); "
                    f"waiting up to {self.patience:g} s for it to come back."
                )
            left = self.since + self.patience - time.monotonic()
            if left <= 0:
                self.given_up = (
                    f"The study storage {self.name} has not answered for {self.patience:g} s "
                    f"({reason(err)}); start the database server or fix the connection, then "
                    "run the same command again to continue the study (or set "
                    "storage_patience=SECONDS to wait longer)."
                )
                raise StorageUnavailable(self.given_up)
            return left

    def answered(self) -> None:
        """A call went through: if the storage was away, say that it is back."""
        if self.since is None:  # the common case, without taking the lock
            return
        with self.lock:
            if self.since is None or self.given_up is not None:
                return
            away = time.monotonic() - self.since
            self.since, self.ended = None, time.monotonic()
            self.tell(f"The study storage {self.name} is back after {away:.0f} s; going on.")

    def ended_within(self, seconds: float) -> bool:
        """Whether an outage ended less than ``seconds`` ago."""
        return time.monotonic() - self.ended < seconds


class ResilientStorage(BaseStorage, BaseHeartbeat):
    """Optuna's cached RDB storage, with every call retried while the database is away.

    Args:
        backend: The RDB storage (with its heartbeat settings).
        name: How messages name the storage (its URL with the password hidden).
        patience: Seconds to wait for a database that went away before giving up.
    """

    def __init__(self, backend: RDBStorage, *, name: str, patience: float = PATIENCE) -> None:
        self.backend, self.inner = backend, _CachedStorage(backend)
        self.outage = Outage(name, patience)
        interval = backend.heartbeat_interval or 0
        self.grace = backend.grace_period or 2 * interval
        # While the database is away, Optuna's trial query logs a warning and tries a slower
        # query that fails the same way; the outage line says it all.
        logging.getLogger("optuna.storages._rdb.storage").addFilter(_OUTAGE_NOISE)

    def _call(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        wait = _FIRST_WAIT
        while True:
            began = time.monotonic()
            try:
                result = call(*args, **kwargs)
            except Exception as err:
                if not is_outage(err):
                    raise
                left = self.outage.failed(err, began)
                time.sleep(min(wait, max(left, 0.05)))
                wait = min(2 * wait, _LONGEST_WAIT)
                continue
            self.outage.answered()
            return result

    # --- the calls that are not safe to repeat ---

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        token = uuid.uuid4().hex
        template = _with_token(template_trial, token)
        tries = 0

        def create() -> int:
            nonlocal tries
            tries += 1
            # An earlier try may have committed the trial and lost only the answer.
            mine = self._tokened(study_id, token) if tries > 1 else []
            return mine[0] if mine else self.inner.create_new_trial(study_id, template)

        trial_id = self._call(create)
        self._call(self._drop_copies, study_id, token, trial_id)
        return trial_id

    def _tokened(self, study_id: int, token: str) -> list[int]:
        trials = self.inner.get_all_trials(study_id, deepcopy=False)
        return sorted(t._trial_id for t in trials if t.system_attrs.get(CREATE_TOKEN) == token)

    def _drop_copies(self, study_id: int, token: str, kept: int) -> None:
        """Fail and hide stray copies of a new trial (each made by a retried commit)."""
        for trial_id in self._tokened(study_id, token):
            if trial_id == kept or self.inner.get_trial(trial_id).state.is_finished():
                continue
            self.inner.set_trial_user_attr(trial_id, SURPLUS, True)
            self.inner.set_trial_state_values(trial_id, TrialState.FAIL)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        tries = 0

        def update() -> bool:
            nonlocal tries
            tries += 1
            try:
                return self.inner.set_trial_state_values(trial_id, state, values)
            except UpdateFinishedTrialError:
                # After a lost answer the trial may already be where this call put it.
                if tries == 1 or self.inner.get_trial(trial_id).state != state:
                    raise
                return True

        done = self._call(update)
        if not done and state == TrialState.RUNNING and tries > 1:
            # A lost answer may hide that this call claimed the trial; one heartbeat makes it
            # go stale (and be retried) if nobody runs it, and costs nothing if someone does.
            self._call(self.inner.record_heartbeat, trial_id)
        return done

    # --- heartbeats ---

    def record_heartbeat(self, trial_id: int) -> None:
        self._call(self.inner.record_heartbeat, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self.outage.ended_within(self.grace):
            # Just after an outage every heartbeat looks stale: give live workers one grace
            # period to beat again before their trials are failed as dead.
            return []
        return self._call(self.inner._get_stale_trial_ids, study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self.inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.inner.get_heartbeat_stale_trial_callback()

    # --- every other call, retried as it is (each is a read or an idempotent write) ---

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        return self._call(self.inner.create_new_study, directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._call(self.inner.delete_study, study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call(self.inner.set_study_user_attr, study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call(self.inner.set_study_system_attr, study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._call(self.inner.get_study_id_from_name, study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._call(self.inner.get_study_name_from_id, study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._call(self.inner.get_study_directions, study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call(self.inner.get_study_user_attrs, study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._call(self.inner.get_study_system_attrs, study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._call(self.inner.get_all_studies)

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any
    ) -> None:
        args = (trial_id, param_name, param_value_internal, distribution)
        self._call(self.inner.set_trial_param, *args)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        call = self.inner.get_trial_id_from_study_id_trial_number
        return self._call(call, study_id, trial_number)

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        self._call(self.inner.set_trial_intermediate_value, trial_id, step, value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call(self.inner.set_trial_user_attr, trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call(self.inner.set_trial_system_attr, trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._call(self.inner.get_trial, trial_id)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self._call(self.inner.get_all_trials, study_id, deepcopy, states)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._call(self.inner.get_best_trial, study_id)

    def remove_session(self) -> None:
        self.backend.remove_session()


def _with_token(template: FrozenTrial | None, token: str) -> FrozenTrial:
    """The trial to create, marked with ``token``; without a template, a plain running trial."""
    if template is None:
        return FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=datetime.now(),  # what Optuna stores for a trial made by `ask`
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={CREATE_TOKEN: token},
            intermediate_values={},
            trial_id=-1,
        )
    marked = copy.deepcopy(template)
    marked.system_attrs = {**template.system_attrs, CREATE_TOKEN: token}
    return marked


class _OutageNoise(logging.Filter):
    """Drops Optuna's "falling back to a slower query" warning when the cause is an outage."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith("Caught an error from sqlalchemy"):
            return True
        return not any(s in text for s in ("connection", "server", *_SQLITE_BUSY))


_OUTAGE_NOISE = _OutageNoise()

"""The retrying study storage on its own: outages waited out, lost answers not repeated."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import exc as sa_exc

from search.engine.runner import run_trial
from search.keys import SURPLUS
from search.study.resilient import ResilientStorage, StorageUnavailable, is_outage
from search.tracking.server import free_port

GONE, BACK = "is not answering", "is back after"


def storage(path: Path, *, patience: float = 10.0, heartbeat: int | None = None):
    """A retrying storage on a SQLite file that gives up on a lock after 0.1 s."""
    beat = {"heartbeat_interval": heartbeat, "grace_period": 1} if heartbeat else {}
    backend = RDBStorage(
        f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 0.1}}, **beat
    )
    return ResilientStorage(backend, name="the test storage", patience=patience)


@pytest.fixture
def study(tmp_path) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=storage(tmp_path / "s.db"))


def lock_for(path: Path, seconds: float) -> threading.Thread:
    """Hold an exclusive lock on the SQLite file for ``seconds``, from another connection."""
    locked = threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        connection.execute("COMMIT")
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait()
    return thread


def lost_answer(call):
    """``call`` that commits, then fails once as if the connection died before the answer."""
    state = {"failed": False}

    def wrapped(*args, **kwargs):
        result = call(*args, **kwargs)
        if not state["failed"]:
            state["failed"] = True
            raise sa_exc.OperationalError(
                "COMMIT", {}, sqlite3.OperationalError("database is locked")
            )
        return result

    return wrapped


def stderr_lines(capsys, text: str) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if text in line]


def test_outages_are_told_from_bad_requests(tmp_path):
    pytest.importorskip("psycopg")
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    with pytest.raises(sa_exc.OperationalError) as refused:
        sqlalchemy.create_engine(nobody).connect()
    assert is_outage(refused.value)
    with pytest.raises(sa_exc.OperationalError) as unopenable:
        sqlalchemy.create_engine(f"sqlite:///{tmp_path}/no/such/dir/x.db").connect()
    assert is_outage(unopenable.value)
    with pytest.raises(sa_exc.OperationalError) as missing:
        sqlalchemy.create_engine(f"sqlite:///{tmp_path}/x.db").connect().execute(
            sqlalchemy.text("SELECT * FROM no_such_table")
        )
    assert not is_outage(missing.value)
    assert not is_outage(ValueError("Cannot tell a COMPLETE trial."))


def test_a_lock_shorter_than_the_patience_is_waited_out_with_one_line_each_way(tmp_path, capsys):
    study = optuna.create_study(study_name="s", storage=storage(tmp_path / "s.db"))
    holder = lock_for(tmp_path / "s.db", 1.5)
    trial = study.ask()  # waits for the lock
    holder.join()
    study.tell(trial, 1.0)
    err = capsys.readouterr().err
    assert err.count(GONE) == 1 and "database is locked" in err and err.count(BACK) == 1
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


def test_past_the_patience_every_call_stops_with_one_clear_error(tmp_path, capsys):
    study = optuna.create_study(study_name="s", storage=storage(tmp_path / "s.db", patience=1))
    trial = study.ask()
    holder = lock_for(tmp_path / "s.db", 2.5)
    with pytest.raises(StorageUnavailable, match="has not answered for 1 s") as stopped:
        trial.report(0.5, 0)
    assert "run the same command again" in str(stopped.value)
    with pytest.raises(StorageUnavailable):  # the process is stopping: no second wait
        study.tell(trial, 1.0)
    holder.join()
    assert len(stderr_lines(capsys, GONE)) == 1


def test_a_created_trial_whose_answer_was_lost_is_found_not_made_twice(study):
    inner = study._storage.inner
    inner.create_new_trial = lost_answer(inner.create_new_trial)
    trial = study.ask()
    (stored,) = study.trials
    assert stored.number == trial.number and stored.state == TrialState.RUNNING


def test_a_stray_copy_of_a_new_trial_is_failed_and_hidden(study):
    inner, real = study._storage.inner, study._storage.inner.create_new_trial

    def twice(study_id, template):  # what Optuna's own retry does after a lost commit
        real(study_id, template)
        return real(study_id, template)

    inner.create_new_trial = twice
    trial = study.ask()
    stray, kept = study.trials
    assert kept.number == trial.number and kept.state == TrialState.RUNNING
    assert stray.state == TrialState.FAIL and stray.user_attrs[SURPLUS] is True


def test_a_finished_trial_whose_answer_was_lost_stays_finished(study, capsys):
    trial = study.ask()
    inner = study._storage.inner
    inner.set_trial_state_values = lost_answer(inner.set_trial_state_values)
    study.tell(trial, 0.25)
    (stored,) = study.trials
    assert stored.state == TrialState.COMPLETE and stored.value == 0.25
    assert len(stderr_lines(capsys, BACK)) == 1


def test_a_claimed_waiting_trial_whose_answer_was_lost_can_go_stale(tmp_path):
    study = optuna.create_study(study_name="s", storage=storage(tmp_path / "s.db", heartbeat=1))
    study.enqueue_trial({"x": 0.5})
    (queued,) = study.trials
    inner = study._storage.inner
    inner.set_trial_state_values = lost_answer(inner.set_trial_state_values)
    study.ask()  # its claim of the queued trial looks refused: it creates a new one
    time.sleep(2.2)  # past the grace period
    assert queued._trial_id in inner._get_stale_trial_ids(study._study_id)


def test_a_trial_another_worker_failed_during_an_outage_ends_without_an_error(study, capsys):
    def objective(trial: optuna.Trial) -> float:
        # What another worker does when this one's heartbeat looked stale.
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        trial.report(0.5, 0)
        return 0.5

    frozen, stop = run_trial(study, study.ask(), objective)
    assert frozen.state == TrialState.FAIL and stop is None
    assert len(stderr_lines(capsys, "was failed by another worker")) == 1


def test_a_storage_that_stays_away_stops_the_trial_loop_without_recording(study):
    def objective(trial: optuna.Trial) -> float:
        raise StorageUnavailable("The study storage ... has not answered for 120 s")

    with pytest.raises(StorageUnavailable):
        run_trial(study, study.ask(), objective)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]  # for the heartbeat to fail

"""Scale-out: `--workers N` on one machine, and workers on one PostgreSQL-backed study."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from search.cli.main import main
from search.study.storage import open_storage
from tests.support.small_space import SETTINGS, write_space

TINY = [*SETTINGS, "epochs=1", "heartbeat=1"]
POSTGRES = os.environ.get("HPO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture
def space(tmp_path) -> Path:
    return write_space(tmp_path / "scale.py")


def admin_connection(url: str) -> Any:
    """An autocommit DB-API connection to ``url``, with whichever PostgreSQL driver is installed.

    Raises:
        ConnectionError: Saying what is missing: a driver, or a server answering at ``url``.
    """
    for module in ("psycopg", "psycopg2"):
        try:
            driver = importlib.import_module(module)
        except ImportError:
            continue
        try:
            connection = driver.connect(url, connect_timeout=5)
        except driver.Error as err:
            reason = str(err).strip().splitlines()[0]
            raise ConnectionError(f"no PostgreSQL server answers at {url} ({reason})") from None
        connection.autocommit = True
        return connection
    raise ConnectionError("no PostgreSQL driver is installed (pip install 'psycopg[binary]')")


@pytest.fixture
def database():
    """A fresh PostgreSQL database for one test, dropped afterwards; a skip without a server."""
    try:
        admin = admin_connection(f"{POSTGRES}/postgres")
    except ConnectionError as err:
        pytest.skip(
            f"{err}; start PostgreSQL there (bash .ci/postgres.sh starts a local cluster) or "
            "set HPO_TEST_POSTGRES to a server's URL"
        )
    name = f"hpo_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def start(space: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "search.cli", "run", str(space), *TINY, *args]
    return subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(worker: subprocess.Popen, timeout: float = 900) -> str:
    _, err = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, err.decode()[-3000:]
    return err.decode()


def load(name: str, url: str) -> optuna.Study:
    """The study, through hpo's storage opener."""
    return optuna.load_study(study_name=name, storage=open_storage(url, create=False))


def test_the_bare_postgresql_url_works_for_hpo_and_for_optuna_itself(database):
    # SQLAlchemy 2.1 reads postgresql:// as psycopg 3, the driver hpo's postgres extra installs.
    assert database.startswith("postgresql://")
    study = optuna.create_study(study_name="bare", storage=open_storage(database))
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    again = optuna.load_study(study_name="bare", storage=database)  # a user's own script
    assert [t.value for t in again.trials] == [1.0]


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def mlflow_nesting(uri: str, study_name: str) -> tuple[list[str], list[str]]:
    """(study run ids, parent run ids of the trial runs) in the study's experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    studies = [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("hpo.kind") == "trial"]
    return studies, [r.data.tags["mlflow.parentRunId"] for r in trials]


@pytest.mark.slow
def test_three_workers_on_postgres_finish_exactly_the_target_under_one_mlflow_run(
    space, database, tmp_path
):
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": mlflow_uri}
    args = ["--study", "shared", "--storage", database, "--trials", "5", "threads=1"]
    workers = [start(space, *args, "--no-export", env=env) for _ in range(3)]
    logs = [finish(w) for w in workers]
    assert not any("database is locked" in log or "Traceback" in log for log in logs)
    study = load("shared", database)
    done = finished(study)
    assert len(done) == 5
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert {t.user_attrs["splits_id"] for t in done} == {study.user_attrs["hpo.splits_id"]}
    assert len({t.params["lr"] for t in done}) == 5
    studies, parents = mlflow_nesting(mlflow_uri, "shared")
    assert len(studies) == 1
    assert len(parents) >= 5 and set(parents) == set(studies)


@pytest.mark.slow
def test_heartbeat_failover_on_postgres_retries_a_killed_workers_trial(space, database):
    args = ["--study", "failover", "--storage", database, "--trials", "3", "epochs=3"]
    args += ["tracking=none", "--no-export", "threads=1"]
    victim = start(space, *args)
    study = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            study = load("failover", database)
            running = [
                t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.intermediate_values
            ]
        except KeyError:
            running = []
        if running:
            break
        time.sleep(0.5)
    assert running, "the first worker never started a trial"
    killed = running[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finish(start(space, *args))
    study = load("failover", database)
    assert len(finished(study)) == 3
    assert study.trials[killed.number].state == TrialState.FAIL
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params


@pytest.mark.slow
def test_workers_flag_runs_processes_on_one_study_and_the_parent_exports(space, capsys):
    assert main(["run", str(space), "--trials", "4", "--workers", "2", *TINY]) == 0
    err = capsys.readouterr().err
    assert "Started 2 workers" in err and "Top trials of study 'scale'" in err
    study = optuna.load_study(study_name="scale", storage="sqlite:///studies/scale/study.db")
    assert len(finished(study)) == 4
    logs = sorted(Path("studies/scale/logs").glob("worker-*.log"))
    assert len(logs) == 2
    assert all("trial" in log.read_text() for log in logs)  # both workers ran trials
    assert Path("studies/scale/export/manifest.json").exists()


def test_without_a_postgres_server_the_postgres_tests_skip_and_say_what_is_missing():
    """No server at HPO_TEST_POSTGRES: a skip that names the address and the fix, no error."""
    env = {**os.environ, "HPO_TEST_POSTGRES": "postgresql://postgres@127.0.0.1:1"}
    test = f"{Path(__file__)}::test_heartbeat_failover_on_postgres_retries_a_killed_workers_trial"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", test, "-q", "-rs", "-p", "no:cacheprovider"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 skipped" in done.stdout and "error" not in done.stdout.lower()
    assert "no PostgreSQL server answers at postgresql://postgres@127.0.0.1:1" in done.stdout
    assert "set HPO_TEST_POSTGRES" in done.stdout


def test_ci_says_in_one_line_when_no_postgres_server_answers():
    env = {**os.environ, "HPO_TEST_POSTGRES": "postgresql://postgres@127.0.0.1:1"}
    script = Path(__file__).resolve().parents[3] / ".ci" / "postgres.sh"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0
    (line,) = done.stdout.splitlines()
    assert "no PostgreSQL server answers on 127.0.0.1:1" in line and "skipped" in line

"""Faults mid-study: a PostgreSQL server that stops, a locked SQLite file, a dead MLflow server.

The PostgreSQL tests start their own server (initdb and pg_ctl on a free port in a temporary
folder, as the machine's ``postgres`` user when run as root), so they can stop it at will.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.cli.main import main
from search.study.storage import SQLITE_BUSY_SECONDS, open_storage
from search.tracking.server import free_port
from tests.support.small_space import SETTINGS, write_space

TINY = [*SETTINGS, "heartbeat=1", "threads=1"]
GONE, BACK, GAVE_UP = "is not answering", "is back after", "has not answered for"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture
def space(tmp_path) -> Path:
    return write_space(tmp_path / "outage.py")


# --- a PostgreSQL server of our own ---


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing; .ci/run installs the postgresql package")
        pytest.skip(f"{name} not found (apt-get install postgresql)")
    return found


def _as_owner(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; the machine's postgres user runs it instead.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _check_owner() -> None:
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        if os.environ.get("CI"):
            pytest.fail("no postgres user to run the test server; install the postgresql package")
        pytest.skip("running as root without a postgres user to run the test server")


@dataclass
class Postgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1:port (trust authentication)."""

    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres:secret@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        command = [_postgres_bin("pg_ctl"), "-D", str(self.folder / "data"), "-w", *args]
        subprocess.run(_as_owner(command), check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.folder / "server.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    pytest.importorskip("psycopg")
    initdb = _postgres_bin("initdb")
    _check_owner()
    folder = Path(tempfile.mkdtemp(prefix="hpo-pg-"))  # tmp_path is not readable by postgres
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data = str(folder / "data")
    init = [initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"]
    subprocess.run(_as_owner(init), check=True, capture_output=True, timeout=120)
    server = Postgres(folder, free_port())
    server.start()
    try:
        yield server
    finally:
        subprocess.run(_as_owner([_postgres_bin("pg_ctl"), "-D", data, "-m", "immediate", "stop"]))
        shutil.rmtree(folder, ignore_errors=True)


# --- running a study in a child process ---


def start(space: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "search.cli", "run", str(space), *TINY, *args]
    return subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="outage", storage=open_storage(url, create=False))


def wait_mid_trial(worker: subprocess.Popen, url: str, timeout: float = 300) -> None:
    """Until a trial has reported an epoch: the worker is training, past model building."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, worker.stderr.read().decode()[-3000:]
        try:
            running = load(url).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # the study or its tables do not exist yet
            running = []
        if any(t.intermediate_values for t in running):
            return
        time.sleep(0.3)
    raise AssertionError("no trial started in time")


def outcome(worker: subprocess.Popen, timeout: float = 300) -> tuple[int, list[str]]:
    _, err = worker.communicate(timeout=timeout)
    return worker.returncode, err.decode().splitlines()


def lines_with(lines: list[str], text: str) -> list[str]:
    return [line for line in lines if text in line]


# --- the tests ---


@pytest.mark.slow
def test_a_postgres_restart_mid_study_is_waited_out_and_the_study_goes_on(space, postgres):
    args = ["--study", "outage", "--storage", postgres.url, "--trials", "2", "epochs=1"]
    worker = start(space, *args, "tracking=none", "--no-export", "storage_patience=60")
    wait_mid_trial(worker, postgres.url)
    postgres.stop()
    time.sleep(6)  # longer than the heartbeat's grace period (3 s)
    postgres.start()
    code, lines = outcome(worker)
    assert code == 0, "\n".join(lines[-40:])
    assert not lines_with(lines, "Traceback")
    (gone,) = lines_with(lines, GONE)
    (back,) = lines_with(lines, BACK)
    assert "postgres:***@127.0.0.1" in gone and "secret" not in gone + back
    study = load(postgres.url)
    assert len(study.get_trials(states=FINISHED)) == 2
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    # The trial that ran through the outage went on: nothing failed, nothing was retried.
    assert not study.get_trials(states=(TrialState.FAIL,))


@pytest.mark.slow
def test_past_storage_patience_the_worker_stops_with_one_line_and_the_next_run_continues(
    space, postgres
):
    args = ["--study", "outage", "--storage", postgres.url, "--trials", "1", "epochs=3"]
    args += ["tracking=none", "--no-export"]
    worker = start(space, *args, "storage_patience=3")
    wait_mid_trial(worker, postgres.url)
    stalled = load(postgres.url).get_trials(states=(TrialState.RUNNING,))[0]
    postgres.stop()
    code, lines = outcome(worker, timeout=120)
    assert code == 2, "\n".join(lines[-40:])
    assert not lines_with(lines, "Traceback")
    assert len(lines_with(lines, GONE)) == 1
    (gave_up,) = lines_with(lines, GAVE_UP)
    assert gave_up.startswith("hpo: error: The study storage postgresql://postgres:***@")
    assert "run the same command again" in gave_up and "storage_patience" in gave_up
    assert "secret" not in "\n".join(lines)
    postgres.start()
    code, lines = outcome(start(space, *args))
    assert code == 0, "\n".join(lines[-40:])
    study = load(postgres.url)
    assert study.trials[stalled.number].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == stalled.number]
    assert retry.params == stalled.params and retry.state in FINISHED


@pytest.mark.slow
def test_a_sqlite_file_locked_past_its_busy_timeout_is_waited_out(space):
    url = f"sqlite:///{Path('studies/outage/study.db').resolve()}"
    worker = start(space, "--trials", "2", "epochs=2", "tracking=none", "--no-export")
    wait_mid_trial(worker, url)
    locker = sqlite3.connect(Path("studies/outage/study.db"), isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # nobody else may read or write the file
    time.sleep(SQLITE_BUSY_SECONDS + 4)
    locker.execute("COMMIT")
    locker.close()
    code, lines = outcome(worker)
    assert code == 0, "\n".join(lines[-40:])
    assert not lines_with(lines, "Traceback")
    (gone,) = lines_with(lines, GONE)
    assert "database is locked" in gone
    assert len(lines_with(lines, BACK)) == 1
    study = load(url)
    assert len(study.get_trials(states=FINISHED)) == 2
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


@pytest.mark.slow
def test_a_dead_mlflow_server_costs_the_export_one_line_and_nothing_on_disk(
    space, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    assert main(["run", str(space), *TINY, "epochs=1", "--trials", "1"]) == 0
    err = capsys.readouterr().err
    assert Path("studies/outage/export/manifest.json").exists()
    (line,) = lines_with(err.splitlines(), "export was not logged to MLflow")
    assert "connection refused" in line.lower()
    for noise in ("HTTPConnectionPool", "Max retries exceeded", "Traceback", "urllib3"):
        assert noise not in err
    assert main(["export", "outage"]) == 0  # again, from the storage
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert len(lines_with(lines, "export was not logged to MLflow")) == 1
    assert not lines_with(lines, "HTTPConnectionPool")

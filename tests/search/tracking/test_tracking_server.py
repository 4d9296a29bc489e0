"""Tracking through a real `mlflow server` on 127.0.0.1: MLFLOW_TRACKING_URI is honoured, and a
server that dies or hangs mid-study costs the study nothing but its tracking."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from search.cli import ui
from search.context import RunRequest
from search.engine.run import prepare, run
from search.hooks import Hooks
from search.keys import TRIAL_RUN_ATTR
from search.tracking.server import free_port, server_command, start_server, stop_server
from search.tracking.tracker import MlflowTracker, tracking_hook
from search.tracking.writer import prepare_mlflow
from tests.support.tracking import quiet, write_space

STOPPED = "stopped answering"


@dataclass
class Server:
    """A running `mlflow server` and where it keeps its state."""

    url: str
    store: str
    process: object
    log: Path


@contextmanager
def mlflow_server(folder: Path, store: str | None = None) -> Iterator[Server]:
    """`mlflow server` on a free loopback port (its own sqlite store unless ``store`` is given)."""
    store = store or f"sqlite:///{folder / 'server.db'}"
    port, log = free_port(), folder / "mlflow-server.log"
    process = start_server(store, port=port, log=log)
    try:
        yield Server(f"http://127.0.0.1:{port}", store, process, log)
    finally:
        stop_server(process)


class StopServerAfterFirstTrial(Hooks):
    """Kills the tracking server once the first trial is stored (and tracked)."""

    def __init__(self, server: Server) -> None:
        self.server, self.done = server, False

    def trial_ended(self, study: optuna.Study, trial) -> None:
        if not self.done:
            stop_server(self.server.process)
            self.done = True


@pytest.mark.slow
def test_mlflow_tracking_uri_points_the_study_at_a_tracking_server(tmp_path, monkeypatch):
    with mlflow_server(tmp_path) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        space = write_space(Path.cwd(), "remote")
        request = RunRequest(
            space=str(space), overrides=["epochs=1"], trials=2, progress=False, export=False
        )
        assert run(request, console=quiet(), hooks=[tracking_hook]) == "done"
        client = mlflow.MlflowClient(server.url)
        experiment = client.get_experiment_by_name("remote").experiment_id
        runs = client.search_runs([experiment])
        kinds = sorted(r.data.tags["hpo.kind"] for r in runs)
        assert kinds == ["fold"] * 4 + ["study"] + ["trial"] * 2
        (study_run,) = [r for r in runs if r.data.tags["hpo.kind"] == "study"]
        trial_run = next(r for r in runs if r.info.run_name == "trial-0")  # best so far
        artifacts = {a.path for a in client.list_artifacts(trial_run.info.run_id)}
        assert {"config.yaml", "confusion_matrix.png", "oof_predictions.csv"} <= artifacts
        assert "trials.csv" in {a.path for a in client.list_artifacts(study_run.info.run_id)}
        history = client.get_metric_history(trial_run.info.run_id, "fold_cv_optimistic")
        assert len(history) == 2
    assert not Path("mlflow.db").exists()  # nothing went to the local default store


@pytest.mark.slow
def test_a_server_that_dies_mid_study_loses_no_trial(tmp_path, monkeypatch, capfd):
    with mlflow_server(tmp_path) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        space = write_space(Path.cwd(), "outage")
        request = RunRequest(
            space=str(space), overrides=["epochs=1"], trials=3, progress=False, export=False
        )
        hooks = [tracking_hook, lambda _: StopServerAfterFirstTrial(server)]
        assert run(request, console=quiet(), hooks=hooks) == "done"
    err = capfd.readouterr().err
    assert err.count(STOPPED) == 1, err
    assert f"MLflow tracking at {server.url} {STOPPED}" in err
    assert "the study goes on without it." in err
    study = optuna.load_study(
        study_name="outage", storage=f"sqlite:///{Path.cwd()}/studies/outage/study.db"
    )
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [TRIAL_RUN_ATTR in t.user_attrs for t in trials] == [True, False, False]


def test_a_server_that_hangs_is_given_up_within_the_timeout(monkeypatch, capfd):
    # A socket that accepts connections but never answers: what a hung server looks like.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        current = prepare(RunRequest(space=str(write_space(Path.cwd(), "hung")), progress=False))
        started = time.monotonic()
        tracker = MlflowTracker(current, tracking_uri=uri)
        waited = time.monotonic() - started
    assert not tracker.active
    err = capfd.readouterr().err
    assert err.count(STOPPED) == 1
    assert "timed out" in err
    assert waited < 60, "a hung server must not stall the study"


UI_SCRIPT = """
import argparse, sys
from search.cli import ui
parser = argparse.ArgumentParser(prog="hpo")
ui.add_parser(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.handler(args))
"""


def hpo_ui(*args: str) -> subprocess.Popen:
    """`hpo ui ARGS` in a child process (unbuffered, so its lines arrive as printed)."""
    command = [sys.executable, "-u", "-c", UI_SCRIPT, "ui", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_hpo_ui_serves_the_local_store_on_loopback_and_prints_the_runs_address():
    prepare_mlflow()
    experiment = mlflow.MlflowClient().create_experiment("shown", tags={"hpo.study": "shown"})
    port = free_port()
    ui = hpo_ui("shown", "--port", str(port))
    # An experiment without hpo's view: the trials filtered and sorted, best first.
    address = (
        f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning"
        "&searchFilter=tags.%60hpo.kind%60%20%3D%20%27trial%27"
        "&orderByKey=metrics.%60cv_optimistic_mean%60&orderByAsc=false"
    )
    try:
        printed = [ui.stdout.readline() for _ in range(2)]
        assert printed[0].startswith(f"MLflow UI for sqlite:///{Path.cwd()}/mlflow.db")
        assert printed[1].strip() == f"shown: {address}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            assert reply.status == 200  # it prints only once the server answers
        ui.send_signal(signal.SIGINT)
        assert ui.wait(60) == 0
    finally:
        if ui.poll() is None:
            ui.kill()
    with pytest.raises(OSError):  # Ctrl-C stopped the server too
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


def test_hpo_ui_binds_to_loopback_unless_told_otherwise():
    command = server_command("sqlite:///x.db", port=5001)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5001"
    assert command[command.index("--backend-store-uri") + 1] == "sqlite:///x.db"


def test_hpo_ui_says_what_to_do_without_a_store_or_with_an_unknown_study():
    ui = hpo_ui()
    output, _ = ui.communicate(timeout=120)
    assert ui.returncode != 0
    assert "No MLflow store at" in output and "run `hpo run` in this folder first" in output
    prepare_mlflow()
    mlflow.MlflowClient().search_experiments()  # creates ./mlflow.db
    ui = hpo_ui("nosuch")
    output, _ = ui.communicate(timeout=120)
    assert "No experiment named 'nosuch'" in output
    assert "MLflow UI for" not in output  # nothing was started


def test_hpo_ui_with_a_tracking_server_only_prints_its_address(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    ui = hpo_ui()
    output, _ = ui.communicate(timeout=120)
    assert ui.returncode == 0
    assert output.startswith("MLflow tracking server: http://127.0.0.1:")
    assert "could not list its studies" in output  # nobody listens there


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _answers_on(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_hpo_ui_stopped_by_a_supervisor_stops_its_server_too(stop):
    """`kill`, `timeout` or a closed terminal stop `hpo ui` and its MLflow server, like Ctrl-C."""
    prepare_mlflow()
    mlflow.MlflowClient().search_experiments()  # creates ./mlflow.db
    port = free_port()
    command = [sys.executable, "-u", "-m", "search.cli", "ui", "--port", str(port)]
    ui = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    servers: list[int] = []
    try:
        assert ui.stdout.readline().startswith("MLflow UI for")  # printed once it answers
        servers = _children(ui.pid)
        assert servers and _answers_on(port)
        ui.send_signal(stop)
        ui.wait(60)
        deadline = time.monotonic() + 5
        while _answers_on(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _answers_on(port), f"the MLflow server still answers on {port} after {stop!r}"
        assert ui.returncode == 0
    finally:
        if ui.poll() is None:
            ui.kill()
        for server in servers:  # what a failed stop left behind
            with suppress(ProcessLookupError):
                os.killpg(server, signal.SIGKILL)


def test_a_signal_before_the_wait_still_stops_the_server(monkeypatch):
    """SIGTERM may come while the addresses are printed (the supervisor test's race)."""
    prepare_mlflow()
    mlflow.MlflowClient().search_experiments()  # creates ./mlflow.db
    stopped = []
    monkeypatch.setattr(ui, "start_server", lambda *a, **k: "the server")
    monkeypatch.setattr(ui, "stop_server", stopped.append)

    def interrupted(*args):
        raise KeyboardInterrupt  # what the SIGTERM handler raises

    monkeypatch.setattr(ui, "_print_addresses", interrupted)
    args = argparse.Namespace(study=None, port=free_port(), host="127.0.0.1")
    try:
        status = ui.cmd_ui(args)
    except KeyboardInterrupt:
        pytest.fail(f"the interrupt escaped hpo ui; servers stopped: {stopped}")
    assert status == 0 and stopped == ["the server"]

"""`hpo dashboard`: optuna-dashboard on a study's storage, read back through its HTTP API."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna

from search.study.storage import StudyPlace
from search.tracking.server import free_port


def _hpo_like_study(name: str, trials: int) -> StudyPlace:
    place = StudyPlace.of(name)
    place.folder.mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=place.storage_url, direction="maximize")
    study.set_user_attr("hpo.fingerprint", "test")  # what `hpo run` leaves on its studies
    for value in range(trials):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 10.0**-value},
                distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1, log=True)},
                value=value / 10,
            )
        )
    return place


def _read_line(process: subprocess.Popen, deadline: float) -> str:
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "/dashboard/studies/" in line:
            return line
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"no study address printed; stderr: {process.stderr.read()[-2000:]}")


def test_hpo_dashboard_serves_the_study_and_stops_on_sigterm():
    _hpo_like_study("dash", trials=3)
    port = free_port()
    cmd = [sys.executable, "-m", "search.cli", "dashboard", "dash", "--port", str(port)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _read_line(process, time.monotonic() + 90)
        address = line.split()[-1]
        assert address.startswith(f"http://127.0.0.1:{port}/dashboard/studies/")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as reply:
            studies = json.load(reply)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["dash"]
        study_id = studies[0]["study_id"]
        assert address.endswith(f"/{study_id}")
        url = f"http://127.0.0.1:{port}/api/studies/{study_id}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            trials = json.load(reply)["trials"]
        assert sorted(t["values"][0] for t in trials) == [0.0, 0.1, 0.2]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:  # SIGTERM, so that hpo stops the dashboard's process group
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    with socket.socket() as probe:  # nothing answers on the port any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_hpo_dashboard_names_an_unknown_study(tmp_path: Path):
    cmd = [sys.executable, "-m", "search.cli", "dashboard", "nosuch"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2
    assert "No study storage at" in done.stderr and "nosuch" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1

"""Killed processes, Ctrl-C, out-of-memory, NaN and failing trials lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.cli.main import main
from search.context import RunRequest
from search.engine import objective as objective_module
from search.engine.run import run
from search.engine.runner import TooManyFailures
from tests.support.small_space import SETTINGS, write_space
from trainer import loop

TINY = [*SETTINGS, "epochs=1", "tracking=none"]


@pytest.fixture
def space(tmp_path) -> Path:
    return write_space(tmp_path / "rel.py")


def load() -> optuna.Study:
    return optuna.load_study(study_name="rel", storage="sqlite:///studies/rel/study.db")


def test_out_of_memory_retries_with_half_batch_and_double_accumulation(space, monkeypatch):
    real_fit = objective_module.fit

    def fit_that_needs_small_batches(config, *args, **kwargs):
        if config.batch_size > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(config, *args, **kwargs)

    monkeypatch.setattr(objective_module, "fit", fit_that_needs_small_batches)
    run(RunRequest(space=str(space), overrides=[*TINY, "batch_size=64"], trials=1), hooks=[])
    (trial,) = load().trials
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["config"]["batch_size"] == 16
    assert trial.user_attrs["config"]["grad_accum"] == 4  # same effective batch of 64
    assert trial.user_attrs["out_of_memory_retry"]["fold"] == 0


def test_out_of_memory_at_batch_size_one_fails_the_trial_with_the_reason(space, monkeypatch):
    def always_out_of_memory(config, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(objective_module, "fit", always_out_of_memory)
    request = RunRequest(space=str(space), overrides=[*TINY, "batch_size=2", "max_failures=2"])
    with pytest.raises(TooManyFailures, match="2 trials in a row failed"):
        run(request, hooks=[])
    trials = load().trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert "OutOfMemoryError" in trials[0].user_attrs["fail_reason"]


def test_nan_loss_prunes_the_trial_with_the_reason(space, monkeypatch):
    class NanLoss(torch.nn.Module):
        def forward(self, logits, labels):
            return logits.mean() * float("nan")

    monkeypatch.setattr(loop, "build_loss", lambda config, counts: NanLoss())
    run(RunRequest(space=str(space), overrides=TINY, trials=1), hooks=[])
    (trial,) = load().trials
    assert trial.state == TrialState.PRUNED
    assert "training loss became nan" in trial.user_attrs["pruned_reason"]


def test_failing_trials_keep_tracebacks_and_a_broken_setup_stops_the_study(
    space, monkeypatch, capsys
):
    calls = []

    def broken_fit(config, *args, **kwargs):
        calls.append(config.lr)
        raise RuntimeError("something deep went wrong")

    monkeypatch.setattr(objective_module, "fit", broken_fit)
    assert main(["run", str(space), "--trials", "5", *TINY, "max_failures=3"]) == 2
    err = capsys.readouterr().err
    assert "hpo: error: 3 trials in a row failed" in err and "Traceback" not in err.splitlines()[-1]
    trials = load().trials
    assert len(trials) == 3 and len(calls) == 3
    assert all(t.state == TrialState.FAIL for t in trials)
    assert "RuntimeError: something deep went wrong" in trials[0].user_attrs["traceback"]


def _start(space: Path, *extra: str) -> subprocess.Popen:
    # No export: these tests are about the study, and each export costs seconds of CI.
    cmd = [sys.executable, "-m", "search.cli", "run", str(space), *TINY, "heartbeat=1", *extra]
    cmd.append("--no-export")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_running_trial(worker: subprocess.Popen, timeout: float = 240) -> None:
    """Until some trial has reported an epoch (it is mid-trial, past model building)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, worker.stderr.read().decode()[-3000:]
        try:
            running = load().get_trials(states=(TrialState.RUNNING,))
        except (KeyError, Exception):
            running = []
        if any(t.intermediate_values for t in running):
            return
        time.sleep(0.3)
    raise AssertionError("no trial started in time")


@pytest.mark.slow
def test_sigkill_mid_trial_then_the_same_command_finishes_the_study(space):
    worker = _start(space, "--trials", "3", "epochs=4")
    _wait_for_running_trial(worker)
    killed = load().get_trials(states=(TrialState.RUNNING,))[0]
    before = load().user_attrs["hpo.fold_of"]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(3)  # past the heartbeat grace period
    again = _start(space, "--trials", "3", "epochs=4")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err.decode()[-3000:]
    study = load()
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 3
    stale = study.trials[killed.number]
    assert stale.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert study.user_attrs["hpo.fold_of"] == before


@pytest.mark.slow
def test_ctrl_c_closes_the_trial_and_says_how_to_resume(space):
    worker = _start(space, "--trials", "3", "epochs=6")
    _wait_for_running_trial(worker)
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130
    message = err.decode()
    assert "Run the same command again to resume" in message
    assert "Traceback" not in message
    interrupted = [t for t in load().trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 1
    assert interrupted[0].user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    assert not load().get_trials(states=(TrialState.RUNNING,))


@pytest.mark.slow
def test_two_processes_share_the_default_study_without_lock_errors(space):
    workers = [_start(space, "--trials", "6") for _ in range(2)]
    errors = []
    for worker in workers:
        _, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err.decode()[-3000:]
        errors.append(err.decode())
    assert not any("database is locked" in e for e in errors)
    study = load()
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 6
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert len({t.params["lr"] for t in finished}) == 6  # the two never proposed alike

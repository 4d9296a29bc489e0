"""`hpo run --workers N`: N worker processes on one study, one device (or CPU share) each.

The parent creates the study (and its splits and MLflow study run) first, so workers only join
it; each worker is an ordinary `hpo run` of the same study pinned to its GPU (or given
``cores / N`` threads on a CPU-only machine). The parent watches the shared storage to show
progress, and exports when the workers are done. A worker that dies loses nothing: its trial's
heartbeat stops, and another worker fails and retries it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from search.context import RunRequest, StudyRun
from search.engine.progress import trial_line
from search.engine.run import default_hooks, finish, observers_for, prepare
from search.engine.runner import count_trials
from search.study.report import summary_line, visible_trials
from search.study.stopping import stagnation
from trainer.device import cpu_count
from trainer.errors import UserError


class WorkersFailed(UserError):
    """Every worker stopped before the study reached its target."""


@dataclass(frozen=True)
class Worker:
    """One worker process and where its output goes."""

    index: int
    process: subprocess.Popen
    log: Path


def plan_devices(workers: int, gpus: Sequence[str] | None) -> list[dict[str, str]]:
    """Environment overrides per worker: its GPU, or its share of the CPU threads."""
    if gpus is None and torch.cuda.is_available():
        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(workers)]
    threads = str(max(1, cpu_count() // workers))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}] * workers


def worker_command(
    request: RunRequest, current: StudyRun, index: int, env: dict[str, str]
) -> list[str]:
    """The `hpo run` command line of worker ``index`` (same study, storage and target)."""
    overrides = list(request.overrides)
    if "OMP_NUM_THREADS" in env:
        overrides.append(f"threads={env['OMP_NUM_THREADS']}")
    return [
        sys.executable,
        "-m",
        "search.cli",
        "run",
        request.space,
        *overrides,
        f"--trials={current.target}",
        f"--study={current.place.name}",
        f"--storage={current.place.storage_url}",
        f"--worker-index={index}",
        "--no-export",
    ]


def start_workers(
    request: RunRequest, current: StudyRun, gpus: Sequence[str] | None
) -> list[Worker]:
    """Start the worker processes; their output goes to studies/<name>/logs/."""
    logs = current.place.folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    for index, env in enumerate(plan_devices(request.workers, gpus)):
        log = logs / f"worker-{index}.log"
        with log.open("ab") as sink:
            process = subprocess.Popen(
                worker_command(request, current, index, env),
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        started.append(Worker(index, process, log))
    return started


def run_workers(request: RunRequest, *, gpus: Sequence[str] | None = None) -> str:
    """Run the study with ``request.workers`` processes; the parent watches and exports.

    Raises:
        WorkersFailed: If every worker stopped and the study is short of its target.
        KeyboardInterrupt: After passing Ctrl-C on to the workers and waiting for them.
    """
    current = prepare(request)
    # The parent's hooks see no trial: they set up (the MLflow study run, before any worker
    # looks for it) and close the study (tables, plots, checkpoint sweep).
    observers = observers_for(current, default_hooks())
    workers = start_workers(request, current, gpus)
    current.console.print(
        f"Started {len(workers)} workers on study '{current.place.name}'; logs in "
        f"{workers[0].log.parent}"
    )
    outcome = "failed"
    try:
        watch(current, workers)
        outcome = _outcome(current, workers)
    except KeyboardInterrupt:
        outcome = "interrupted"
        _stop(workers)
        raise
    finally:
        observers.study_ended(current.study, outcome)
    finish(current, outcome)
    return outcome


def watch(current: StudyRun, workers: Sequence[Worker], *, every: float = 2.0) -> None:
    """Print each trial as it finishes, whoever ran it, until every worker has exited."""
    seen = {t.number for t in visible_trials(current.study) if t.state.is_finished()}
    current.console.print(f"{current.place.name}: {summary_line(current.study, current.target)}")
    while any(w.process.poll() is None for w in workers):
        time.sleep(every)
        for trial in visible_trials(current.study):
            if trial.state.is_finished() and trial.number not in seen:
                seen.add(trial.number)
                line = f"{trial_line(trial)}  |  {summary_line(current.study, current.target)}"
                current.console.print(line, soft_wrap=True)


def _outcome(current: StudyRun, workers: Sequence[Worker]) -> str:
    finished, _ = count_trials(current.study)
    if finished >= current.target:
        return "done"
    reason = stagnation(current.study, current.space.settings["patience_trials"])
    if reason:  # the workers stopped because the study stopped improving
        current.console.print(f"Stopped early: {reason}.")
        return "patience"
    codes = ", ".join(f"worker {w.index}: {w.process.returncode}" for w in workers)
    raise WorkersFailed(
        f"Every worker stopped with the study at {finished}/{current.target} trials ({codes}); "
        f"read {workers[0].log.parent}/worker-*.log, fix the cause, and run the same command "
        "again."
    )


def _stop(workers: Sequence[Worker]) -> None:
    """Pass Ctrl-C on (a terminal already sent it to the group) and wait for clean exits."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGINT)
    for worker in workers:
        try:
            worker.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.process.kill()

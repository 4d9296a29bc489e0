"""`hpo run --workers N`: N worker processes on one study, one device (or CPU share) each.

The parent creates the study (and its splits and MLflow study run) first, so workers only join
it; each worker is an ordinary `hpo run` of the same study pinned to its GPU (or given
``cores / N`` threads on a CPU-only machine). On a CPU-only Linux machine the workers are forked
before that, once the parent has imported everything, and wait for their command lines
(`search.engine.prefork`): they do not pay the imports again. The parent watches the shared
storage to show progress, and exports when the workers are done. A worker that dies loses
nothing: its trial's heartbeat stops, and another worker fails and retries it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from search.context import RunRequest, StudyRun
from search.engine.prefork import HPO_COMMAND, ForkedProcess, Serve, Spare, can_fork, fork_spares
from search.engine.progress import trial_line
from search.engine.run import default_hooks, finish, hooks_for, prepare
from search.engine.runner import count_trials
from search.hooks import Outcome
from search.study.stopping import stagnation
from search.study.tables import summary_line, visible_trials
from trainer.device import cpu_count
from trainer.errors import UserError


class WorkersFailed(UserError):
    """Every worker stopped before the study reached its target."""


@dataclass(frozen=True)
class Worker:
    """One worker process and where its output goes."""

    index: int
    process: subprocess.Popen | ForkedProcess
    log: Path


def plan_devices(workers: int, gpus: Sequence[str] | None) -> list[dict[str, str]]:
    """Environment overrides per worker: its GPU, or its share of the CPU threads."""
    if gpus is None and torch.cuda.is_available():
        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(workers)]
    threads = str(max(1, cpu_count() // workers))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}] * workers


def check_gpus(gpus: Sequence[str] | None) -> None:
    """Every GPU index given with ``--gpus`` exists here: checked before any study is opened.

    Raises:
        UserError: An index this machine does not have (naming it and the GPUs there are).
    """
    count = torch.cuda.device_count()  # asks the driver without initialising CUDA
    missing = [gpu for gpu in gpus or () if int(gpu) >= count]
    if not missing:
        return
    there = f"{count} GPU(s), numbered 0 to {count - 1}" if count else "no GPU that CUDA can use"
    raise UserError(
        f"--gpus {','.join(gpus or ())} names GPU {', '.join(missing)}, but this machine has "
        f"{there}; pass GPU numbers that exist, or leave --gpus out."
    )


def pin_this_process(gpus: Sequence[str] | None) -> None:
    """A run in this process sees only the GPU given with ``--gpus``, as a worker would.

    Raises:
        RuntimeError: If CUDA is already initialised (the device list can no longer change).
    """
    if not gpus:
        return
    if torch.cuda.is_initialized():
        raise RuntimeError("pin_this_process must run before anything initialises CUDA")
    os.environ.update(plan_devices(1, gpus)[0])


def worker_command(
    request: RunRequest, run: StudyRun, index: int, env: dict[str, str]
) -> list[str]:
    """The `hpo run` command line of worker ``index`` (same study, storage and target)."""
    overrides = list(request.overrides)
    if "OMP_NUM_THREADS" in env:
        overrides.append(f"threads={env['OMP_NUM_THREADS']}")
    flags = [
        f"--trials={run.target}",
        f"--study={run.place.name}",
        f"--storage={run.place.storage_url}",
        f"--worker-index={index}",
        "--no-export",
    ]
    if request.timeout is not None:
        flags.append(f"--timeout={request.timeout}")
    return [*HPO_COMMAND, "run", request.space, *overrides, *flags]


def start_workers(
    request: RunRequest,
    run: StudyRun,
    plan: Sequence[dict[str, str]],
    spares: Sequence[Spare] = (),
) -> Iterator[Worker]:
    """Start the worker processes one by one; their output goes to studies/<name>/logs/.

    Worker ``i`` gets the environment overrides ``plan[i]``, and runs in ``spares[i]`` when
    spares were forked. Each worker gets a process group of its own: a terminal's Ctrl-C (sent
    to its whole foreground group) then reaches only the parent, which passes it on once (see
    `_stop`). A worker interrupted twice could be cut short while it records its trial as failed.
    """
    logs = run.place.folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for index, env in enumerate(plan):
        log = logs / f"worker-{index}.log"
        command = worker_command(request, run, index, env)
        if spares:
            yield Worker(index, spares[index].start(command, env, log), log)
            continue
        with log.open("ab") as sink:
            process = subprocess.Popen(
                command,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdout=sink,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        yield Worker(index, process, log)


def run_workers(
    request: RunRequest, *, gpus: Sequence[str] | None = None, serve: Serve | None = None
) -> Outcome:
    """Run the study with ``request.workers`` processes; the parent watches and exports.

    Args:
        request: The run, as for a single process.
        gpus: The GPUs to spread the workers over (default: every visible one).
        serve: Runs `hpo` with an argument list in this process. Given, and where
            `prefork.can_fork` allows, the workers are forked from this process before the study
            is opened (see `search.engine.prefork`); otherwise they start as new processes.

    Raises:
        WorkersFailed: If every worker stopped and the study is short of its target.
        KeyboardInterrupt: After passing Ctrl-C (or SIGTERM, or a hangup) on to the workers
            and waiting for them.
    """
    plan = plan_devices(request.workers, gpus)
    spares = fork_spares(len(plan), serve) if serve is not None and can_fork(plan) else []
    try:
        return _run_workers(request, plan, spares)
    finally:
        for spare in spares:  # those never started (the study could not be opened, Ctrl-C)
            spare.cancel()


def _run_workers(
    request: RunRequest, plan: Sequence[dict[str, str]], spares: list[Spare]
) -> Outcome:
    run = prepare(request)
    # The parent's hooks see no trial: they set up (the MLflow study run, before any worker
    # looks for it) and close the study (tables, plots, checkpoint sweep).
    run_hooks = hooks_for(run, default_hooks())
    workers: list[Worker] = []
    outcome = Outcome.FAILED
    try:
        with _stopping_signals_interrupt():
            workers.extend(start_workers(request, run, plan, spares))
            run.console.print(
                f"Started {len(workers)} workers on study '{run.place.name}'; logs in "
                f"{workers[0].log.parent}"
            )
            watch(run, workers)
        outcome = _outcome(run, workers)
    except BaseException as err:
        # Ctrl-C, or the parent gives up (its storage stayed away, an error of its own): its
        # workers, in process groups of their own, would go on without it.
        outcome = Outcome.INTERRUPTED if isinstance(err, KeyboardInterrupt) else outcome
        _stop(workers)
        raise
    finally:
        run_hooks.study_ended(run.study, outcome)
    finish(run, outcome)
    return outcome


@contextmanager
def _stopping_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt here, so that the workers are stopped too.

    Workers have process groups of their own, so a supervisor's SIGTERM or a closed terminal's
    hangup reaches only the parent, which must pass it on. A signal this process ignores (as
    under nohup) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    stopping = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) == signal.SIG_DFL]
    for signum in stopping:
        signal.signal(signum, _interrupt)
    try:
        yield
    finally:
        for signum in stopping:
            signal.signal(signum, signal.SIG_DFL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def watch(
    run: StudyRun, workers: Sequence[Worker], *, every: float = 2.0, exits: float = 0.2
) -> None:
    """Print each trial as it finishes, whoever ran it, until every worker has exited.

    The storage is read every ``every`` seconds; the workers' exits are checked every
    ``exits`` seconds, so that the export starts as soon as the last worker is done.
    """
    seen = {t.number for t in visible_trials(run.study) if t.state.is_finished()}
    run.console.print(f"{run.place.name}: {summary_line(run.study, run.target)}")
    looked = time.monotonic()
    while any(w.process.poll() is None for w in workers):
        time.sleep(exits)
        if time.monotonic() - looked >= every:
            _print_new_trials(run, seen)
            looked = time.monotonic()
    _print_new_trials(run, seen)  # those that ended since the last look


def _print_new_trials(run: StudyRun, seen: set[int]) -> None:
    for trial in visible_trials(run.study):
        if trial.state.is_finished() and trial.number not in seen:
            seen.add(trial.number)
            summary = f"  |  {summary_line(run.study, run.target)}"
            line = trial_line(trial, width=run.console.width, suffix=summary)
            run.console.print(line, soft_wrap=True, markup=False)


def _outcome(run: StudyRun, workers: Sequence[Worker]) -> Outcome:
    finished, _ = count_trials(run.study)
    timeout = run.request.timeout or run.space.settings.timeout
    codes = {w.index: w.process.returncode for w in workers}
    timed, logs = timeout is not None, workers[0].log.parent
    reason = stagnation(run.study, run.space.settings.patience_trials)
    if finished < run.target and reason:  # the workers stopped: the study stopped improving
        run.console.print(f"Stopped early: {reason}.")
        return Outcome.PATIENCE
    return outcome_of(finished, run.target, codes, timed=timed, logs=logs)


def outcome_of(
    finished: int, target: int, codes: dict[int, int], *, timed: bool, logs: Path
) -> Outcome:
    """What the workers' run came to, once every worker has exited.

    Args:
        finished: Finished trials of the study now.
        target: The study's target of finished trials.
        codes: Each worker's exit status, by worker index.
        timed: Whether the run had a timeout (``--timeout`` or the space file's ``timeout``).
        logs: The folder of the workers' logs (named in the error).

    Returns:
        `Outcome.DONE` at the target; `Outcome.TIMEOUT` short of it when every worker exited cleanly
        under a timeout (a worker returns short of the target only when its time is up).

    Raises:
        WorkersFailed: Short of the target otherwise.
    """
    if finished >= target:
        return Outcome.DONE
    if timed and all(code == 0 for code in codes.values()):
        return Outcome.TIMEOUT
    statuses = ", ".join(f"worker {index}: {code}" for index, code in codes.items())
    raise WorkersFailed(
        f"Every worker stopped with the study at {finished}/{target} trials ({statuses}); "
        f"read {logs}/worker-*.log, fix the cause, and run the same command again."
    )


def _stop(workers: Sequence[Worker]) -> None:
    """Pass Ctrl-C on to every worker, once, and wait for them to record their trials."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGINT)
    for worker in workers:
        try:
            worker.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.process.kill()

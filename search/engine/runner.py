"""The study loop: run trials until the study has its target of finished trials.

``--trials N`` is a target for the study, not a count for this process: every worker (on any
machine) starts a trial only while finished plus running trials are fewer than N, so running
the same command again after a crash continues exactly where the study stands. The loop uses
ask/tell with its own heartbeat so that it controls which trials count, how failures are
recorded and when to stop, while a killed worker's trial is still failed and retried through
Optuna's heartbeat.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from search import keys
from search.engine.objective import Objective
from search.hooks import Hooks, Outcome
from search.keys import STOPPED, SURPLUS
from search.study.resilient import StorageUnavailable
from search.study.stopping import stagnation
from trainer.device import release_memory
from trainer.errors import UserError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TooManyFailures(UserError):
    """Several trials in a row failed: the setup is probably broken."""


@dataclass(frozen=True)
class RunLimits:
    """When this process stops starting trials."""

    target: int
    timeout: float | None = None
    max_failures: int = 5
    poll_seconds: float = 2.0
    patience: int | None = None  # the space's patience_trials (see search.study.stopping)


class Heartbeat:
    """Records a trial's heartbeat in a thread while it runs (a no-op without heartbeats)."""

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="hpo-heartbeat")

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)
            self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a storage hiccup must not kill training; the next beat retries
                continue


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials of the study, surplus trials excluded."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    finished = sum(t.state in FINISHED for t in trials)
    return finished, len(trials) - finished


def optimize(study: optuna.Study, objective: Objective, hooks: Hooks, limits: RunLimits) -> Outcome:
    """Run trials until the target is reached or the time is up.

    Returns:
        `Outcome.DONE` when the study has its target of finished trials, `Outcome.PATIENCE`
        when it stopped improving (the reason is in the study user attribute `STOPPED`),
        `Outcome.TIMEOUT` otherwise.

    Raises:
        TooManyFailures: After ``limits.max_failures`` failed trials in a row.
        KeyboardInterrupt: After recording the running trial as failed.
    """
    deadline = None if limits.timeout is None else time.monotonic() + limits.timeout
    failures, waiting_since = 0, None
    while True:
        fail_stale_trials(study)
        finished, running = count_trials(study)
        if finished >= limits.target:
            return Outcome.DONE
        if deadline is not None and time.monotonic() >= deadline:
            return Outcome.TIMEOUT
        reason = stagnation(study, limits.patience)
        if reason is not None:
            study.set_user_attr(STOPPED, {"reason": reason, "finished": finished})
            return Outcome.PATIENCE
        if finished + running >= limits.target:
            # Others are running the last trials; one may fail, or its worker die, and then
            # this process runs it again.
            waiting_since = waiting_since or time.monotonic()
            time.sleep(tail_pause(time.monotonic() - waiting_since, limits.poll_seconds))
            continue
        waiting_since = None
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for optimize(); this loop beats itself.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        if _is_surplus(study, trial, limits.target):
            continue
        frozen, stop = run_trial(study, trial, objective)
        hooks.trial_ended(study, frozen)
        release_memory()
        if stop is not None:
            raise stop
        failures = failures + 1 if frozen.state == TrialState.FAIL else 0
        if failures >= limits.max_failures:
            raise TooManyFailures(_too_many(frozen, failures))


def tail_pause(waited: float, most: float) -> float:
    """Seconds to sleep before looking at the study again, ``waited`` seconds into the tail.

    While other workers run the study's last trials, this one looks often at first (the last
    trial usually ends within seconds of the first idle worker, and every second a finished
    worker waits is a second the whole run waits for it) and backs off to ``most`` (the run's
    poll interval), so that many idle workers do not load a shared storage during a long last
    trial.
    """
    return min(most, max(0.25, waited / 10))


def _too_many(last: FrozenTrial, failures: int) -> str:
    reason = last.user_attrs.get(keys.FAIL_REASON_ATTR, "unknown error")
    return (
        f"{failures} trials in a row failed (the last one with: {reason}); the setup looks "
        "broken: fix it, or raise max_failures, then run the same command again."
    )


def _is_surplus(study: optuna.Study, trial: optuna.Trial, target: int) -> bool:
    """Whether another worker took the last free place between our count and our ask."""
    ahead = [
        t
        for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if t.number < trial.number
    ]
    if len(ahead) < target:
        return False
    trial.set_user_attr(SURPLUS, True)
    study.tell(trial, state=TrialState.FAIL)
    return True


def run_trial(
    study: optuna.Study, trial: optuna.Trial, objective: Objective
) -> tuple[FrozenTrial, BaseException | None]:
    """Run one trial under a heartbeat and record its outcome in the storage.

    Returns:
        The stored trial, and the exception that must stop the study after the hooks have
        seen the trial: Ctrl-C, or a `UserError` (a problem only the user can fix).
    """
    with Heartbeat(study._storage, trial._trial_id):
        try:
            stop = _run_and_record(study, trial, objective)
        except (UpdateFinishedTrialError, ValueError):
            # Storing the outcome (or a report) failed because the trial is already finished:
            # while the storage was away its heartbeat went stale, and another worker failed
            # it and queued its parameters again. Nothing is lost; the study goes on.
            if not _taken_over(study, trial):
                raise
            print(
                f"Trial {trial.number} was failed by another worker while the study storage "
                "was away (its heartbeat went stale); its parameters run again as a new trial.",
                file=sys.stderr,
                flush=True,
            )
            stop = None
    # Optuna exposes no public way to read one trial by id from a study.
    return study._storage.get_trial(trial._trial_id), stop


def _run_and_record(
    study: optuna.Study, trial: optuna.Trial, objective: Objective
) -> BaseException | None:
    """Run the objective and tell the storage how the trial ended; returns what must stop."""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except KeyboardInterrupt as err:
        _fail(study, trial, "interrupted (Ctrl-C)", None)
        return err
    except StorageUnavailable:
        # Nothing can be recorded: the trial stays RUNNING until this process has exited and
        # its heartbeat is stale; then the next run fails it and runs its parameters again.
        raise
    except UserError as err:
        _fail(study, trial, str(err), None)
        return err
    except Exception as err:  # any other error fails this trial; the study goes on
        _fail(study, trial, f"{type(err).__name__}: {err}", traceback.format_exc())
    else:
        study.tell(trial, value)
    return None


def _taken_over(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether the storage holds ``trial`` as finished although this process never said so."""
    return study._storage.get_trial(trial._trial_id).state.is_finished()


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str, trace: str | None) -> None:
    trial.set_user_attr(keys.FAIL_REASON_ATTR, reason[:2000])
    if trace:
        trial.set_user_attr(keys.TRACEBACK_ATTR, trace[-20000:])
    study.tell(trial, state=TrialState.FAIL)

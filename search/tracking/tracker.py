"""MLflow tracking of a study: one experiment per study, runs nested study -> trial -> fold.

Every call goes through `MlflowClient` with explicit run ids, never MLflow's "active run" of a
process, so a worker on another machine nests its trials correctly: it finds the study run's id
in the shared Optuna storage (study user attr ``hpo.mlflow_run_id``). Tracking only observes:
the first MLflow error (a server that stopped answering, a full disk) turns tracking off for the
rest of this process with one line on stderr, and the study goes on. What is written (tags,
metric names, files, figures) is in `search.tracking.artifacts`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from optuna.trial import FrozenTrial, TrialState

from search.hooks import Hooks
from search.study.report import visible_trials
from search.tracking import artifacts as content
from search.tracking.artifacts import FAIL_REASON, KEY, KIND, NOTE, PARENT, STATE, STUDY

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from search.context import StudyRun
    from trainer.config import TrainConfig
    from trainer.types import EpochMetrics, FoldResult

STUDY_RUN_ATTR = "hpo.mlflow_run_id"
TRIAL_RUN_ATTR = "mlflow_run_id"

# MLflow retries a failed HTTP request 7 times with a 2 s backoff factor and waits up to 120 s
# for an answer: minutes per call while a tracking server is down. With these a refused
# connection gives up in about 3 s and a hung server in about a minute (once: tracking then
# stops), while a slow artifact upload still has 20 s to be answered; values the user set win.
_MLFLOW_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # read when mlflow is imported: no INFO lines per study
}
_BATCH = 100  # MLflow's limit of params per log_batch call
_SYMPTOMS = ("Connection refused", "Read timed out", "timed out", "Max retries exceeded")

T = TypeVar("T")


@contextmanager
def local_store_lock(uri: str) -> Iterator[None]:
    """Hold a file lock beside a local SQLite tracking store (no-op for other stores).

    MLflow creates and migrates a new SQLite store on first use; several processes doing that
    at once corrupt the migration ("table _alembic_tmp_... already exists").
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_mlflow() -> None:
    """Set hpo's defaults for MLflow's HTTP retries and logging (values the user set win)."""
    for name, value in _MLFLOW_ENV.items():
        os.environ.setdefault(name, value)


def tracking_hook(run: StudyRun) -> Hooks:
    """The tracking hook of a run: MLflow, unless the space says ``tracking = "none"``."""
    if run.space.settings["tracking"] == "none":
        return Hooks()
    return MlflowTracker(run)


class Guard:
    """Runs MLflow calls; the first failure turns tracking off with one line on stderr."""

    def __init__(self, uri: str) -> None:
        self.uri, self.alive = uri, True
        # One thread at a time: the warnings filters that catch_warnings swaps are process-wide.
        self.lock = threading.RLock()

    def __call__(self, call: Callable[..., T], *args: Any) -> T | None:
        """``call(*args)``; None once tracking is off, or if the call raises (turning it off)."""
        if not self.alive:
            return None
        try:
            with self.lock, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MLflow's deprecation and store notices
                return call(*args)
        except Exception as err:  # whatever went wrong, tracking must never end a trial
            self.alive = False
            print(stopped_message(self.uri, err), file=sys.stderr, flush=True)
            return None


def stopped_message(uri: str, err: Exception) -> str:
    """The one line printed when tracking stops, with the gist of ``err``."""
    text = " ".join(str(err).split()) or type(err).__name__
    reason = next((s.lower() for s in _SYMPTOMS if s in text), text)
    reason = reason if len(reason) <= 160 else reason[:157] + "..."
    return f"MLflow tracking at {uri} stopped answering ({reason}); the study goes on without it."


class Writer:
    """Runs tracking work in order on one background thread, so training never waits on it.

    Everything after a trial's run is created (params, per-epoch batches, fold runs, files and
    figures) is queued here; `drain` waits for the queue, e.g. before the process ends.
    """

    def __init__(self, guard: Guard) -> None:
        self.guard, self.queue = guard, queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, daemon=True, name="hpo-mlflow")
        self.thread.start()

    def submit(self, call: Callable[..., Any], *args: Any) -> None:
        """Run ``call(*args)`` after everything submitted before it."""
        self.queue.put((call, args))

    def drain(self) -> None:
        """Wait until everything submitted so far has run."""
        done = threading.Event()
        self.queue.put((None, (done,)))
        done.wait()

    def _work(self) -> None:
        while True:
            call, args = self.queue.get()
            if call is None:  # a drain marker: set it even when tracking is off
                args[0].set()
            else:
                self.guard(call, *args)  # an error turns tracking off; the thread goes on


@dataclass
class _Trial:
    """The MLflow runs of the trial this process is running."""

    number: int
    run_id: str
    fold: int | None = None
    fold_run_id: str | None = None
    predictions: list[content.FoldPredictions] = field(default_factory=list)


class MlflowTracker(Hooks):
    """Writes a study to MLflow while it runs.

    Args:
        run: The running study (space, data, Optuna study).
        refresh_seconds: Least time between two refreshes of the study run's trials table and
            plots, and before the first (they are refreshed again when this process stops).
        tracking_uri: Where to write; by default MLflow's own choice (``MLFLOW_TRACKING_URI``,
            else ``sqlite:///mlflow.db`` in the working directory).
    """

    def __init__(
        self, run: StudyRun, *, refresh_seconds: float = 30.0, tracking_uri: str | None = None
    ) -> None:
        prepare_mlflow()
        import mlflow

        self.uri = tracking_uri or mlflow.get_tracking_uri()
        self.guard = Guard(self.uri)
        self.writer = Writer(self.guard)
        self.run, self.name = run, run.place.name
        # The first refresh too waits refresh_seconds: a short study pays for its plots once.
        self.refresh_seconds, self.refreshed = refresh_seconds, time.monotonic()
        project = run.space.path.resolve().parent
        self.tags = {
            **content.version_tags(),
            **content.git_tags(project),
            **content.machine_tags(),
        }
        self.experiment_id: str | None = None
        self.created: set[str] = set()  # study runs this process created (and may drop)
        self.mine: list[str] = []  # trial runs this process created
        self.trial: _Trial | None = None
        with local_store_lock(self.uri):  # workers creating one SQLite store race its migrations
            self.client: MlflowClient = self.guard(mlflow.MlflowClient, self.uri)
            self.study_run_id = self.guard(self._open_study_run)
        if self.study_run_id and run.study.user_attrs.get(STUDY_RUN_ATTR) != self.study_run_id:
            run.study.set_user_attr(STUDY_RUN_ATTR, self.study_run_id)

    @property
    def active(self) -> bool:
        """Whether tracking is on (set up, and not stopped by an error)."""
        return self.guard.alive and self.study_run_id is not None

    # The study run ---------------------------------------------------------------------------

    def _open_study_run(self) -> str:
        self.experiment_id = self._experiment()
        run_id = self._stored_study_run() or self._find_or_create_study_run()
        self.client.update_run(run_id, status="RUNNING")  # reopened when a study resumes
        return run_id

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.name)
        if found is None:
            try:
                return self.client.create_experiment(self.name, tags={STUDY: self.name})
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = self.client.get_experiment_by_name(self.name)  # a worker beat us to it
        if found.lifecycle_stage == "deleted":
            # Deleted in the UI: its name stays taken, so the study's runs can only go back in.
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def _stored_study_run(self) -> str | None:
        run_id = self.run.study.user_attrs.get(STUDY_RUN_ATTR)
        return run_id if run_id and self._usable(run_id) else None

    def _usable(self, run_id: str) -> bool:
        """Whether ``run_id`` is a live run of this experiment in this store."""
        from mlflow.exceptions import MlflowException

        try:
            info = self.client.get_run(run_id).info
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False  # another tracking store than last time
            raise
        return info.lifecycle_stage == "active" and info.experiment_id == self.experiment_id

    def _find_or_create_study_run(self) -> str:
        found = self._study_runs()
        if found:
            return found[0]
        mine = self._create_study_run()
        # Workers starting together may each create one; all of them keep the oldest, and one
        # that chose before it could see the other's joins it later (see _follow_study_run).
        chosen = (self._study_runs() or [mine])[0]
        if chosen != mine:
            self.client.delete_run(mine)
        return chosen

    def _study_runs(self) -> list[str]:
        from mlflow.entities import ViewType

        query = f"tags.`{KEY}` = '{self._study_key()}' and tags.`{KIND}` = 'study'"
        runs = self.client.search_runs(
            [self.experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY
        )
        return [
            r.info.run_id for r in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))
        ]

    def _study_key(self) -> str:
        # The same for every worker of this study, different for another study of the same name.
        attrs = self.run.study.user_attrs
        parts = [self.name, str(attrs.get("hpo.fingerprint")), str(attrs.get("hpo.content_id"))]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def _create_study_run(self) -> str:
        from mlflow.entities import Param

        from trainer.summary import summarize

        tags = {**self.tags, **content.study_run_tags(self.run, self._study_key())}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.name)
        run_id = run.info.run_id
        self.created.add(run_id)
        params = [Param(k, v) for k, v in content.study_params(self.run).items()]
        self.client.log_batch(run_id, params=params)
        summary = summarize(self.run.table)
        self.client.log_dict(run_id, summary.to_dict(), "data_summary.json")
        self.client.log_text(run_id, summary.to_text() + "\n", "data_summary.txt")
        space_source = self.run.study.user_attrs.get("hpo.space_source", "")
        self.client.log_text(run_id, space_source, "space.py")
        return run_id

    def _follow_study_run(self, study: optuna.Study) -> None:
        """Join the study run another worker settled on at the same moment, if any."""
        stored = study.user_attrs.get(STUDY_RUN_ATTR)
        if not stored or stored == self.study_run_id or not self._usable(stored):
            return  # a worker writing to another tracking store must not move our runs
        dropped, self.study_run_id = self.study_run_id, stored
        for run_id in self.mine:
            self.client.set_tag(run_id, PARENT, stored)
        if dropped in self.created:
            self.client.delete_run(dropped)

    # Trials, folds and epochs ----------------------------------------------------------------

    def trial_started(self, trial: optuna.Trial, config: TrainConfig) -> None:
        """Open the trial's run now (its id goes to Optuna); log its config in the background."""
        if not self.active:
            return
        self.guard(self._follow_study_run, trial.study)
        run_id = self.guard(self._start_trial, trial, config)
        if run_id is not None:
            trial.set_user_attr(TRIAL_RUN_ATTR, run_id)
            searched = sorted(trial.params)
            self.writer.submit(self._open_trial, trial.number, run_id, searched, config)

    def _open_trial(
        self, number: int, run_id: str, searched: list[str], config: TrainConfig
    ) -> None:
        if self.trial is not None:  # a trial that never ended (should not happen): close it
            self._close_runs(self.trial, "KILLED")
        self.trial = _Trial(number, run_id)
        self.mine.append(run_id)
        self._log_config(run_id, searched, config)

    def _start_trial(self, trial: optuna.Trial, config: TrainConfig) -> str:
        tags = {
            **self.tags,
            **content.trial_run_tags(self.run, trial, config),
            PARENT: self.study_run_id,
        }
        name = f"trial-{trial.number}"
        return self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id

    def _log_config(self, run_id: str, searched: list[str], config: TrainConfig) -> None:
        from mlflow.entities import Param, RunTag

        params = [Param(k, content.param_value(v)) for k, v in config.to_dict().items()]
        tags = [RunTag("hpo.searched", ",".join(searched))]
        for chunk in _chunks(params):
            self.client.log_batch(run_id, params=chunk, tags=tags)
        self.client.log_text(run_id, content.config_yaml(config), "config.yaml")

    def epoch_ended(self, trial: optuna.Trial, row: EpochMetrics) -> None:
        """Log one epoch of one fold in one batch (opening the fold's run at its first epoch)."""
        self.writer.submit(self._epoch_ended, trial.number, row)

    def _epoch_ended(self, number: int, row: EpochMetrics) -> None:
        current = self._current(number)
        if current is None:
            return
        if current.fold != row.fold:
            self.guard(self._end_fold_run, current, "FINISHED")
            self.guard(self._start_fold, current, row.fold)
        if current.fold_run_id is not None:
            metrics = _metrics(content.epoch_values(row), step=row.epoch)
            self.guard(self.client.log_batch, current.fold_run_id, metrics)

    def _current(self, number: int) -> _Trial | None:
        current = self.trial
        return current if self.active and current and current.number == number else None

    def _start_fold(self, current: _Trial, fold: int) -> None:
        tags = {**content.fold_run_tags(self.name, current.number, fold), PARENT: current.run_id}
        name = f"trial-{current.number}-fold-{fold}"
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        current.fold, current.fold_run_id = fold, run.info.run_id

    def fold_ended(self, trial: optuna.Trial, result: FoldResult) -> None:
        """Close the fold's run with its best epoch; keep its out-of-fold predictions."""
        self.writer.submit(self._fold_ended, trial.number, result)

    def _fold_ended(self, number: int, result: FoldResult) -> None:
        current = self._current(number)
        if current is None:
            return
        part = content.FoldPredictions(result.fold, result.val_indices, result.val_probs)
        current.predictions.append(part)
        if current.fold_run_id is not None and current.fold == result.fold:
            self.guard(self._finish_fold, current, result)

    def _finish_fold(self, current: _Trial, result: FoldResult) -> None:
        from mlflow.entities import RunTag

        reason = result.stop_reason
        tags = [RunTag("hpo.stop_reason", content.short_tag(reason))] if reason else []
        metrics = _metrics(content.fold_values(result))
        self.client.log_batch(current.fold_run_id, metrics=metrics, tags=tags)
        score = _metrics({"fold_score": result.score}, step=result.fold)
        self.client.log_batch(current.run_id, metrics=score)
        self._end_fold_run(current, "KILLED" if reason == "pruned" else "FINISHED")

    def _end_fold_run(self, current: _Trial, status: str) -> None:
        run_id, current.fold_run_id = current.fold_run_id, None
        if run_id is not None:
            self.client.set_terminated(run_id, status)

    def trial_ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Close the trial's run with its outcome, then refresh the study run (throttled)."""
        self.writer.submit(self._trial_ended, study, trial)

    def _trial_ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        current = self._current(trial.number)
        if self.trial is not None and self.trial.number == trial.number:
            self.trial = None
        if current is not None:
            self.guard(self._end_trial, current, trial)
        self._refresh(study, force=False)

    def _end_trial(self, current: _Trial, trial: FrozenTrial) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in content.outcome_tags(trial).items()]
        self.client.log_batch(
            current.run_id, metrics=_metrics(content.trial_values(trial)), tags=tags
        )
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and current.predictions:
            self._log_predictions(current, trial)
        if trial.user_attrs.get("traceback"):
            self.client.log_text(current.run_id, trial.user_attrs["traceback"], "traceback.txt")
        self._close_runs(current, content.run_status(trial))

    def _log_predictions(self, current: _Trial, trial: FrozenTrial) -> None:
        table = self.run.table
        parts = sorted(current.predictions, key=lambda p: p.fold)
        text = content.oof_csv(parts, table.labels, table.classes, table.paths)
        self.client.log_text(current.run_id, text, "oof_predictions.csv")
        title = f"Trial {trial.number}: out-of-fold confusion ({len(parts)} folds)"
        figure = content.safe_figure(
            content.confusion_figure, parts, table.labels, table.classes, title
        )
        if figure is not None:
            self.client.log_figure(current.run_id, figure, "confusion_matrix.png")

    def _close_runs(self, current: _Trial, status: str) -> None:
        self._end_fold_run(current, status)
        self.client.set_terminated(current.run_id, status)

    # The study run's table and plots, and the end of this process's share ------------------

    def _refresh(self, study: optuna.Study, *, force: bool) -> None:
        now = time.monotonic()
        if not self.active or (not force and now - self.refreshed < self.refresh_seconds):
            return
        self.refreshed = now
        trials = visible_trials(study)
        maximize = study.direction.name == "MAXIMIZE"
        metric = self.run.space.config({}).metric
        history = content.safe_figure(
            content.history_figure, trials, metric=metric, maximize=maximize
        )
        figures = {
            "optimization_history.png": history,
            "param_importances.png": content.safe_figure(content.importance_figure, study),
        }
        values = content.study_values(study, trials)
        self.guard(self._log_study_tables, trials, figures, values)

    def _log_study_tables(
        self,
        trials: Sequence[FrozenTrial],
        figures: dict[str, Figure | None],
        values: dict[str, float | None],
    ) -> None:
        run_id = self.study_run_id
        self.client.log_text(run_id, content.trials_csv(trials), "trials.csv")
        for name, figure in figures.items():
            if figure is not None:
                self.client.log_figure(run_id, figure, name)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        self.client.log_batch(run_id, metrics=_metrics(values, step=finished))

    def study_ended(self, study: optuna.Study, outcome: str) -> None:
        """Close what an interruption left open, refresh the study run and set its status."""
        self.writer.drain()
        current, self.trial = self.trial, None
        if current is not None and self.active:  # Ctrl-C or a user error: no trial_ended
            stored = [t for t in study.get_trials(deepcopy=False) if t.number == current.number]
            if stored:
                self.guard(self._end_trial, current, stored[0])
        self._refresh(study, force=True)
        others = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if self.active and not others:  # the last worker to stop closes the study run
            status = {"done": "FINISHED", "timeout": "FINISHED", "patience": "FINISHED"}
            status["interrupted"] = "KILLED"
            self.guard(self.client.set_terminated, self.study_run_id, status.get(outcome, "FAILED"))


def close_stale_run(
    run_id: str,
    *,
    reason: str = "its worker process died (no heartbeat)",
    tracking_uri: str | None = None,
) -> bool:
    """Close the run of a trial whose process was killed: KILLED, with its open fold runs.

    Meant for trials that Optuna's heartbeat failed: their process could not close its runs.
    Never raises (tracking must not stop a study).

    Args:
        run_id: The trial's MLflow run id (trial user attr ``mlflow_run_id``).
        reason: Recorded as the ``hpo.fail_reason`` tag.
        tracking_uri: The store; by default MLflow's own choice, as for the tracker.

    Returns:
        True if the run was still RUNNING and is now KILLED; False otherwise or on any error.
    """
    prepare_mlflow()
    try:
        import mlflow
        from mlflow.entities import RunTag

        client = mlflow.MlflowClient(tracking_uri or mlflow.get_tracking_uri())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = client.get_run(run_id).info
            if info.status != "RUNNING":
                return False
            query = f"tags.`{PARENT}` = '{run_id}' and attributes.status = 'RUNNING'"
            for child in client.search_runs([info.experiment_id], query):
                client.set_terminated(child.info.run_id, "KILLED")
            tags = {STATE: "FAIL", FAIL_REASON: reason, NOTE: f"Failed: {reason}"}
            client.log_batch(
                run_id, tags=[RunTag(k, content.short_tag(v)) for k, v in tags.items()]
            )
            client.set_terminated(run_id, "KILLED")
    except Exception:  # a dead server, an unknown run: nothing can be closed from here
        return False
    return True


def _metrics(values: dict[str, Any], *, step: int = 0) -> list[Metric]:
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    return [Metric(k, float(v), stamp, step) for k, v in values.items() if v is not None]


def _chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    return (items[i : i + _BATCH] for i in range(0, max(len(items), 1), _BATCH))

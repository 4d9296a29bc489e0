"""MLflow tracking of a study: one experiment per study, runs nested study -> trial -> fold.

`MlflowTracker` is the hook that decides what is logged when. Which run is the study's is
settled in `search.tracking.study_run`; a trial's and its folds' runs are written by
`search.tracking.runs`, on the background thread of `search.tracking.writer`, whose guard turns
tracking off at the first MLflow error (the study goes on). What is written (tags, metric names,
files, figures) is in `search.tracking.artifacts` and `search.tracking.figures`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from search.hooks import Hooks, Outcome
from search.keys import PARENT_TAG, TRIAL_RUN_ATTR
from search.study.splits import stored_folds
from search.study.storage import on_stale_trial
from search.tracking import artifacts as content
from search.tracking.dataset import dataset_input, log_dataset
from search.tracking.runs import (
    TrialRuns,
    best_so_far,
    close_stale_trial_run,
    log_study_tables,
    study_tables,
)
from search.tracking.study_run import StudyRunElection, local_store_lock
from search.tracking.system import start_monitor, stop_monitor
from search.tracking.ui_address import address_line
from search.tracking.writer import Guard, Writer, prepare_mlflow

if TYPE_CHECKING:
    import numpy as np
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from optuna.trial import FrozenTrial

    from search.context import StudyRun
    from trainer.config import TrainConfig
    from trainer.types import EpochMetrics, FoldResult


def tracking_hook(run: StudyRun) -> Hooks:
    """The tracking hook of a run: MLflow, unless the space says ``tracking = "none"``."""
    if run.space.settings.tracking == "none":
        return Hooks()
    return MlflowTracker(run)


class MlflowTracker(Hooks):
    """Writes a study to MLflow while it runs.

    Args:
        run: The running study (space, data, Optuna study).
        refresh_seconds: Least time between two refreshes of the study run's trials table and
            counts, and before the first (they are refreshed again when this process stops).
        plot_seconds: The same for the study run's plots, which cost more to draw.
        tracking_uri: Where to write; by default MLflow's own choice (``MLFLOW_TRACKING_URI``,
            else ``sqlite:///mlflow.db`` in the working directory).
    """

    def __init__(
        self,
        run: StudyRun,
        *,
        refresh_seconds: float = 30.0,
        plot_seconds: float = 300.0,
        tracking_uri: str | None = None,
    ) -> None:
        prepare_mlflow()
        import mlflow

        self.uri = tracking_uri or mlflow.get_tracking_uri()
        self.guard = Guard(self.uri)
        self.writer = Writer(self.guard)
        self.run = run
        # The first refresh too waits: a short study pays for its plots once, at its end.
        self.refresh_seconds, self.plot_seconds = refresh_seconds, plot_seconds
        self.refreshed = self.plotted = time.monotonic()
        project = run.space.path.resolve().parent
        tags = {**content.version_tags(), **content.git_tags(project), **content.machine_tags()}
        self.tags = tags
        self.trial: TrialRuns | None = None
        self.monitor: SystemMetricsMonitor | None = None  # the study run's system metrics
        self.dataset: DatasetInput | None = None  # the image table, once described
        with local_store_lock(self.uri):  # workers creating one SQLite store race its migrations
            self.client: MlflowClient = self.guard(mlflow.MlflowClient, self.uri)
            self.election = StudyRunElection(self.client, run, tags)
            self.guard(self.election.open)
        if self.active:
            self.election.store()
            on_stale_trial(close_stale_trial_run)  # this process may find dead workers' trials
            self.writer.submit(self._log_study_dataset, stored_folds(run.study))
            if self._watches_study():
                self.writer.submit(self._start_study_monitor)

    def _watches_study(self) -> bool:
        # One process per study run logs its system metrics, or their steps would interleave:
        # a single `hpo run`, or worker 0 of `hpo run --workers N` (not their parent).
        request = self.run.request
        return request.worker == 0 and request.workers == 1

    def _log_study_dataset(self, fold_of: np.ndarray) -> None:
        self.dataset = dataset_input(self.run.table, fold_of)
        log_dataset(self.client, self.study_run_id, self.dataset)  # once: MLflow drops repeats

    def _start_study_monitor(self) -> None:
        self.monitor = start_monitor(self.study_run_id, self.uri, resume=True)

    @property
    def active(self) -> bool:
        """Whether tracking is on (set up, and not stopped by an error)."""
        return self.guard.alive and self.study_run_id is not None

    @property
    def study_run_id(self) -> str | None:
        """The study's MLflow run (None when tracking could not start)."""
        return self.election.study_run_id

    @property
    def experiment_id(self) -> str | None:
        """The study's MLflow experiment."""
        return self.election.experiment_id

    def trial_started(self, trial: optuna.Trial, config: TrainConfig) -> None:
        """Open the trial's run now (its id goes to Optuna); log its config in the background."""
        if not self.active:
            return
        self.guard(self.election.follow, trial.study)
        run_id = self.guard(self._create_trial_run, trial, config)
        if run_id is not None:
            trial.set_user_attr(TRIAL_RUN_ATTR, run_id)
            name = self.run.place.name
            runs = TrialRuns(self.client, self.experiment_id, name, trial.number, run_id)
            self.writer.submit(self._open_trial, runs, sorted(trial.params), config)

    def _create_trial_run(self, trial: optuna.Trial, config: TrainConfig) -> str:
        tags = {
            **self.tags,
            **content.trial_run_tags(self.run, trial, config),
            PARENT_TAG: self.study_run_id,
        }
        name = f"trial-{trial.number}"
        return self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id

    def _open_trial(self, runs: TrialRuns, searched: list[str], config: TrainConfig) -> None:
        if self.trial is not None:  # a trial that never ended (should not happen): close it
            self.trial.close("KILLED")
        self.trial = runs
        self.election.mine.append(runs.run_id)
        runs.log_config(searched, config)
        log_dataset(self.client, runs.run_id, self.dataset)
        runs.monitor = start_monitor(runs.run_id, self.uri)

    def _current(self, number: int) -> TrialRuns | None:
        current = self.trial
        return current if self.active and current and current.number == number else None

    def epoch_ended(self, trial: optuna.Trial, row: EpochMetrics) -> None:
        """Log one epoch of one fold in one batch (opening the fold's run at its first epoch)."""
        self.writer.submit(self._epoch_ended, trial.number, row)

    def _epoch_ended(self, number: int, row: EpochMetrics) -> None:
        current = self._current(number)
        if current is not None:
            current.epoch_ended(row)

    def fold_ended(self, trial: optuna.Trial, result: FoldResult) -> None:
        """Close the fold's run with its best epoch; keep its out-of-fold predictions."""
        self.writer.submit(self._fold_ended, trial.number, result)

    def _fold_ended(self, number: int, result: FoldResult) -> None:
        current = self._current(number)
        if current is not None:
            current.fold_ended(result)

    def trial_ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Close the trial's run with its outcome, then refresh the study run (throttled)."""
        self.writer.submit(self._trial_ended, study, trial)

    def _trial_ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        current = self._current(trial.number)
        if self.trial is not None and self.trial.number == trial.number:
            self.trial.stop_monitor()  # also when tracking stopped since the trial started
            self.trial = None
        if current is not None:
            self.guard(current.end, trial, self.run.table, best=best_so_far(study, trial))
        self._refresh(study, force=False)

    def _refresh(self, study: optuna.Study, *, force: bool) -> None:
        now = time.monotonic()
        if not self.active or (not force and now - self.refreshed < self.refresh_seconds):
            return
        self.refreshed = now
        plots = force or now - self.plotted >= self.plot_seconds
        self.plotted = now if plots else self.plotted
        tables = study_tables(study, self.run, plots=plots)
        self.guard(log_study_tables, self.client, self.study_run_id, tables)

    def study_ended(self, study: optuna.Study, outcome: Outcome) -> None:
        """Close what an interruption left open, refresh the study run and set its status."""
        from optuna.trial import TrialState

        self.writer.drain()
        current, self.trial = self.trial, None
        if current is not None and self.active:  # Ctrl-C or a user error: no trial_ended
            stored = [t for t in study.get_trials(deepcopy=False) if t.number == current.number]
            if stored:
                self.guard(current.end, stored[0], self.run.table)
        if current is not None:
            current.stop_monitor()
        self._refresh(study, force=True)
        self.monitor, monitor = None, self.monitor
        stop_monitor(monitor)
        others = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if self.active and not others:  # the last worker to stop closes the study run
            status = dict.fromkeys((Outcome.DONE, Outcome.TIMEOUT, Outcome.PATIENCE), "FINISHED")
            status[Outcome.INTERRUPTED] = "KILLED"
            self.guard(self.client.set_terminated, self.study_run_id, status.get(outcome, "FAILED"))
        if self.active:
            line = address_line(self.uri, self.run.place.name, self.experiment_id)
            self.run.console.print(line, soft_wrap=True, markup=False, highlight=False)

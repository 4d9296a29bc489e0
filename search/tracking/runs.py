"""The MLflow runs of a trial and its folds: created, filled and closed through `MlflowClient`.

Every call names its run by id, never MLflow's "active run" of a process, so trials of workers
on other machines nest correctly. A trial's runs are written on the tracker's writer thread;
`close_stale_run` closes the runs of a trial whose process was killed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from search import keys
from search.study.tables import visible_trials
from search.tracking import artifacts as content
from search.tracking import figures
from search.tracking import plots as study_plots
from search.tracking.system import stop_monitor
from search.tracking.writer import chunks, metrics, prepare_mlflow

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from search.context import StudyRun
    from trainer.config import TrainConfig
    from trainer.sources import ImageTable
    from trainer.types import EpochMetrics, FoldResult

_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call


@dataclass
class TrialRuns:
    """The MLflow runs of the trial this process is running: the trial's and its open fold's."""

    client: MlflowClient
    experiment_id: str
    study: str
    number: int
    run_id: str
    fold: int | None = None
    fold_run_id: str | None = None
    predictions: list[content.FoldPredictions] = field(default_factory=list)
    monitor: SystemMetricsMonitor | None = None  # this machine's utilisation while it runs
    # Epoch metrics wait here until `flush_seconds` passed since the last write, or the fold
    # ends: one write per fold when epochs are short, one per epoch when they are long.
    flush_seconds: float = 10.0
    pending: list[Metric] = field(default_factory=list)
    flushed: float = field(default_factory=time.monotonic)
    epoch: int = -1  # the open fold's last epoch: an earlier one means the fold started again

    def log_config(self, searched: list[str], config: TrainConfig) -> None:
        """The resolved config as params (and config.yaml); which parameters were searched."""
        from mlflow.entities import Param, RunTag

        params = [Param(k, content.param_value(v)) for k, v in config.to_dict().items()]
        tags = [RunTag(keys.SEARCHED_TAG, ",".join(searched))]
        for chunk in chunks(params):
            self.client.log_batch(self.run_id, params=chunk, tags=tags)
        self.client.log_text(self.run_id, content.config_yaml(config), keys.CONFIG_ARTIFACT)

    def epoch_ended(self, row: EpochMetrics) -> None:
        """Keep one epoch's metrics for the fold's run (opened at its first epoch)."""
        if self.fold != row.fold:
            self.end_fold("FINISHED")
            self._start_fold(row.fold)
        elif row.epoch <= self.epoch:
            self._restart_fold(row.fold)
        self.epoch = row.epoch
        if self.fold_run_id is None:
            return
        self.pending += metrics(content.epoch_values(row), step=row.epoch)
        if time.monotonic() - self.flushed >= self.flush_seconds:
            self._flush()

    def _flush(self, extra: Sequence[Metric] = (), tags: Sequence[RunTag] = ()) -> None:
        """Write the kept epoch metrics (and ``extra``, ``tags``) to the fold's run."""
        values, self.pending, self.flushed = [*self.pending, *extra], [], time.monotonic()
        if self.fold_run_id is None or not (values or tags):
            return
        for chunk in chunks(values, size=_METRICS_PER_BATCH):
            self.client.log_batch(self.fold_run_id, metrics=chunk, tags=tags)
            tags = ()

    def _restart_fold(self, fold: int) -> None:
        """The fold started again (retried with a smaller batch after running out of memory).

        Its first attempt's epochs stay in their run, closed as failed, and the retry gets a
        run of its own: in one run, each epoch's step would be logged twice.
        """
        from mlflow.entities import RunTag

        if self.fold_run_id is not None:
            self._flush(tags=[RunTag(keys.STOP_REASON_TAG, "retried with a smaller batch")])
        self.end_fold("FAILED")
        self._start_fold(fold, suffix="-retry")

    def _start_fold(self, fold: int, suffix: str = "") -> None:
        tags = {
            **content.fold_run_tags(self.study, self.number, fold),
            keys.PARENT_TAG: self.run_id,
        }
        name = f"trial-{self.number}-fold-{fold}{suffix}"
        created = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        self.fold, self.fold_run_id = fold, created.info.run_id

    def fold_ended(self, result: FoldResult) -> None:
        """Close the fold's run with its best epoch; keep its out-of-fold predictions."""
        part = content.FoldPredictions(result.fold, result.val_indices, result.val_probs)
        self.predictions.append(part)
        if self.fold_run_id is None or self.fold != result.fold:
            return
        from mlflow.entities import RunTag

        reason = result.stop_reason
        tags = [RunTag(keys.STOP_REASON_TAG, content.short_tag(reason))] if reason else []
        self._flush(metrics(content.fold_values(result)), tags)
        score = metrics({keys.FOLD_SCORE_METRIC: result.score}, step=result.fold)
        self.client.log_batch(self.run_id, metrics=score)
        self.end_fold("KILLED" if reason == "pruned" else "FINISHED")

    def end_fold(self, status: str) -> None:
        """Write what the open fold run still has to, and close it (if there is one)."""
        self._flush()
        run_id, self.fold_run_id = self.fold_run_id, None
        if run_id is not None:
            self.client.set_terminated(run_id, status)

    def end(self, trial: FrozenTrial, table: ImageTable, *, best: bool = False) -> None:
        """Log the trial's outcome, predictions and traceback, and close its runs.

        Args:
            trial: The trial as stored.
            table: The study's images (paths, labels, classes of the predictions).
            best: Whether it is the study's best trial so far: only then is its out-of-fold
                confusion matrix drawn (the figure costs more than the rest of the trial's
                tracking together, and informs only for the trials worth looking at).
        """
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in content.outcome_tags(trial).items()]
        values = metrics(content.trial_values(trial))
        self.client.log_batch(self.run_id, metrics=values, tags=tags)
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and self.predictions:
            self._log_predictions(trial, table, figure=best)
        traceback = trial.user_attrs.get(keys.TRACEBACK_ATTR)
        if traceback:
            self.client.log_text(self.run_id, traceback, keys.TRACEBACK_ARTIFACT)
        self.close(content.run_status(trial))

    def _log_predictions(self, trial: FrozenTrial, table: ImageTable, *, figure: bool) -> None:
        parts = sorted(self.predictions, key=lambda p: p.fold)
        text = content.oof_csv(parts, table.labels, table.classes, table.paths)
        self.client.log_text(self.run_id, text, keys.OOF_ARTIFACT)
        if not figure:
            return
        title = f"Trial {trial.number}: out-of-fold confusion ({len(parts)} folds)"
        drawn = study_plots.safe_figure(
            figures.confusion_figure, parts, table.labels, table.classes, title
        )
        if drawn is not None:
            self.client.log_figure(self.run_id, drawn, keys.CONFUSION_ARTIFACT)

    def close(self, status: str) -> None:
        """Set the trial's run (and its open fold run) to ``status``."""
        self.stop_monitor()  # its last samples go in before the run closes
        self.end_fold(status)
        self.client.set_terminated(self.run_id, status)

    def stop_monitor(self) -> None:
        """Stop logging system metrics to the trial's run."""
        monitor, self.monitor = self.monitor, None
        stop_monitor(monitor)


@dataclass(frozen=True)
class StudyTables:
    """What the study run shows of the trials so far: table, plots, counts and best value."""

    trials: Sequence[FrozenTrial]
    figures: dict[str, Figure | None]
    values: dict[str, float | None]


def study_tables(study: optuna.Study, run: StudyRun, *, plots: bool = True) -> StudyTables:
    """Count the study's trials and, if asked, draw the study run's plots (no MLflow call)."""
    trials = visible_trials(study)
    drawn: dict[str, Figure | None] = {}
    if plots:
        drawn = study_plots.study_figures(study, trials, metric=run.space.settings.metric)
    return StudyTables(trials, drawn, content.study_values(study, trials))


def best_so_far(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Whether ``trial`` is complete and as good as the study's best trial."""
    if trial.state != TrialState.COMPLETE:
        return False
    try:
        return trial.value == study.best_value
    except ValueError:  # no complete trial in the storage (yet)
        return False


def log_study_tables(client: MlflowClient, run_id: str, tables: StudyTables) -> None:
    """Refresh the study run's trials table, plots and trial counts."""
    client.log_text(run_id, content.trials_csv(tables.trials), keys.TRIALS_ARTIFACT)
    for name, figure in tables.figures.items():
        if figure is not None:
            client.log_figure(run_id, figure, name)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in tables.trials)
    client.log_batch(run_id, metrics=metrics(tables.values, step=done))


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

        client = mlflow.MlflowClient(tracking_uri or mlflow.get_tracking_uri())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _kill(client, run_id, reason)
    except Exception:  # a dead server, an unknown run: nothing can be closed from here
        return False


def _kill(client: MlflowClient, run_id: str, reason: str) -> bool:
    from mlflow.entities import RunTag

    info = client.get_run(run_id).info
    if info.status != "RUNNING":
        return False
    query = f"tags.`{keys.PARENT_TAG}` = '{run_id}' and attributes.status = 'RUNNING'"
    for child in client.search_runs([info.experiment_id], query):
        client.set_terminated(child.info.run_id, "KILLED")
    tags = {
        keys.STATE_TAG: "FAIL",
        keys.FAIL_REASON_TAG: reason,
        keys.NOTE_TAG: f"Failed: {reason}",
    }
    client.log_batch(run_id, tags=[RunTag(k, content.short_tag(v)) for k, v in tags.items()])
    client.set_terminated(run_id, "KILLED")
    return True


def close_stale_trial_run(study: optuna.Study, trial: FrozenTrial) -> None:
    """A `search.study.storage` stale-trial listener: close the dead trial's MLflow run."""
    run_id = trial.user_attrs.get(keys.TRIAL_RUN_ATTR)
    if run_id:
        close_stale_run(run_id)

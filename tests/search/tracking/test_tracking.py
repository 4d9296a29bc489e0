"""MLflow tracking: what a small study wrote, read back through `MlflowClient`.

One module-scoped study (4 trials on digits: complete, failed, pruned, complete) serves most
tests; a hook placed after the tracker fails trial 1 and prunes trial 2 so that every outcome
is covered without depending on the pruner's luck.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pytest
import yaml
from mlflow.entities import Run, ViewType
from optuna.trial import TrialState, create_trial

from search.context import RunRequest
from search.engine.run import prepare, run
from search.hooks import Hooks
from search.keys import STUDY_RUN_ATTR, TRIAL_RUN_ATTR
from search.space.settings import StudySettings
from search.study import storage
from search.study.storage import open_storage, redact_url
from search.tracking import system
from search.tracking.artifacts import outcome_tags, run_status
from search.tracking.dataset import image_frame
from search.tracking.runs import TrialRuns, close_stale_run, close_stale_trial_run
from search.tracking.tracker import MlflowTracker, tracking_hook
from search.tracking.ui_address import VIEW_TAG
from search.tracking.writer import Guard, prepare_mlflow, stopped_message
from tests.support.tracking import Saboteur, quiet, write_space
from trainer.sources import ImageTable
from trainer.types import EpochMetrics, FoldResult

EPOCH_METRICS = ("train_loss", "val_loss", "accuracy", "f1_macro", "lr")
DIGITS = 1797


@dataclass
class Tracked:
    """A finished study and what it wrote to MLflow."""

    folder: Path
    client: mlflow.MlflowClient
    study: optuna.Study
    runs: list[Run]
    batches: list[tuple[str, dict]]
    printed: str

    def kind(self, kind: str) -> list[Run]:
        return [r for r in self.runs if r.data.tags.get("hpo.kind") == kind]

    def trial_run(self, number: int) -> Run:
        (found,) = [
            r for r in self.kind("trial") if r.data.tags["optuna.trial_number"] == str(number)
        ]
        return found

    def folds_of(self, run: Run) -> list[Run]:
        children = [
            r for r in self.kind("fold") if r.data.tags["mlflow.parentRunId"] == run.info.run_id
        ]
        return sorted(children, key=lambda r: int(r.data.tags["hpo.fold"]))

    def artifacts(self, run: Run) -> set[str]:
        return {a.path for a in self.client.list_artifacts(run.info.run_id)}

    def text(self, run: Run, name: str) -> str:
        return mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{name}")


def counting_tracker(batches: list[tuple[str, dict]]):
    """A tracker factory whose client records every log_batch call."""

    def make(current) -> MlflowTracker:
        tracker = MlflowTracker(current)
        original = tracker.client.log_batch

        def log_batch(run_id, metrics=(), params=(), tags=(), **kwargs):
            batches.append((run_id, {"metrics": list(metrics), "params": list(params)}))
            return original(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

        tracker.client.log_batch = log_batch
        return tracker

    return make


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Iterator[Tracked]:
    folder = tmp_path_factory.mktemp("tracked")
    previous, uri = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(folder)  # MLflow's default store is ./mlflow.db: it must land in this folder
    batches: list[tuple[str, dict]] = []
    try:
        space = write_space(folder)
        request = RunRequest(space=str(space), trials=3, progress=False, export=False)
        console = quiet()
        with pytest.MonkeyPatch.context() as patch:
            # A sample a second (MLflow's default is 10 s): these trials take seconds.
            patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
            hooks = [counting_tracker(batches), lambda _: Saboteur()]
            run(request, console=console, hooks=hooks)
    finally:
        os.chdir(previous)
        if uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = uri
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    storage = f"sqlite:///{folder / 'studies' / 'tiny' / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    yield Tracked(folder, client, study, runs, batches, console.file.getvalue())


def test_one_experiment_named_after_the_study_with_one_study_run(tracked):
    (study_run,) = tracked.kind("study")
    assert study_run.info.run_name == "tiny"
    assert "mlflow.parentRunId" not in study_run.data.tags
    assert study_run.info.status == "FINISHED"
    assert tracked.study.user_attrs[STUDY_RUN_ATTR] == study_run.info.run_id
    assert {r.info.experiment_id for r in tracked.runs} == {study_run.info.experiment_id}
    assert not (tracked.folder / "mlruns").exists() or any((tracked.folder / "mlruns").iterdir())


def test_every_trial_is_a_run_nested_in_the_study_run(tracked):
    (study_run,) = tracked.kind("study")
    trials = tracked.study.get_trials()
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    assert len(tracked.kind("trial")) == len(trials) == 4
    for trial in trials:
        run_ = tracked.trial_run(trial.number)
        assert run_.data.tags["mlflow.parentRunId"] == study_run.info.run_id
        assert trial.user_attrs[TRIAL_RUN_ATTR] == run_.info.run_id
        assert run_.info.run_name == f"trial-{trial.number}"
        assert run_.data.tags["optuna.state"] == trial.state.name


def test_folds_are_nested_in_their_trial(tracked):
    fold_counts = [len(tracked.folds_of(tracked.trial_run(n))) for n in range(4)]
    assert fold_counts == [2, 1, 2, 2]
    assert len(tracked.kind("fold")) == sum(fold_counts)
    for fold in tracked.folds_of(tracked.trial_run(0)):
        assert fold.data.tags["optuna.trial_number"] == "0"
        assert fold.info.status == "FINISHED"


def test_params_are_the_resolved_config(tracked):
    for trial in tracked.study.get_trials():
        params = tracked.trial_run(trial.number).data.params
        assert params == {k: str(v) for k, v in trial.user_attrs["config"].items()}
        assert params["backbone"] == "test_vit"
        assert float(params["lr"]) == pytest.approx(trial.params["lr"])


def test_each_fold_has_one_value_per_epoch_of_each_metric(tracked):
    for number, epochs in ((0, [0, 1]), (3, [0, 1])):
        for fold in tracked.folds_of(tracked.trial_run(number)):
            for name in (*EPOCH_METRICS, "score", "epoch_seconds"):
                history = tracked.client.get_metric_history(fold.info.run_id, name)
                assert sorted(m.step for m in history) == epochs, (number, name)
            assert fold.data.metrics["best_epoch"] in (0, 1)
    (pruned_fold,) = tracked.folds_of(tracked.trial_run(2))[1:]
    assert len(tracked.client.get_metric_history(pruned_fold.info.run_id, "val_loss")) == 1


def test_epoch_metrics_are_written_whole_and_in_batches(tracked):
    fold_ids = {r.info.run_id for r in tracked.kind("fold")}
    epoch_calls = [
        (run_id, batch)
        for run_id, batch in tracked.batches
        if run_id in fold_ids and any(m.key == "train_loss" for m in batch["metrics"])
    ]
    logged = sum(len(tracked.client.get_metric_history(f, "train_loss")) for f in fold_ids)
    # 2 folds x 2 epochs, except trial 1 (failed in epoch 2 of fold 0) and 2 (pruned in fold 1)
    assert logged == 4 + 2 + 3 + 4
    assert len(fold_ids) <= len(epoch_calls) <= logged  # at most one write per epoch
    written = [(run_id, m.step) for run_id, batch in epoch_calls for m in batch["metrics"]]
    for run_id, batch in epoch_calls:
        for step in {m.step for m in batch["metrics"] if m.key == "train_loss"}:
            keys = {m.key for m in batch["metrics"] if m.step == step}
            assert set(EPOCH_METRICS) <= keys  # an epoch is written whole, in one call
            assert written.count((run_id, step)) == len(keys)  # and only once


def epoch(fold: int, number: int) -> EpochMetrics:
    return EpochMetrics(fold, number, 0.5, 0.6, 0.7, 0.65, 1e-3, 0.65, 0.1)


def test_short_epochs_of_a_fold_go_out_in_one_write_with_its_summary():
    prepare_mlflow()
    calls: list[str] = []
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("batched")
    trial_run = client.create_run(experiment).info.run_id
    original = client.log_batch

    def log_batch(run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append(run_id)
        return original(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    client.log_batch = log_batch
    runs = TrialRuns(client, experiment, "batched", 0, trial_run, flush_seconds=3600)
    for number in range(3):
        runs.epoch_ended(epoch(0, number))
    assert calls == []  # kept until the fold ends
    probs = np.full((2, 2), 0.5)
    result = FoldResult(0, 0.65, 2, (), np.array([0, 1]), probs, {}, 1.0, None)
    runs.fold_ended(result)
    (fold_run,) = client.search_runs([experiment], "tags.`hpo.fold` = '0'")
    assert calls == [fold_run.info.run_id, trial_run]  # the fold's epochs and summary, its score
    history = client.get_metric_history(fold_run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert fold_run.info.status == "FINISHED"
    runs.flush_seconds = 0  # long epochs: each is written when it ends
    runs.epoch_ended(epoch(1, 0))
    runs.epoch_ended(epoch(1, 1))
    assert len(calls) == 4


def test_a_retried_fold_logs_each_epoch_once_and_its_first_attempt_in_a_run_of_its_own():
    # Issue 24 item 17: a fold retried after running out of memory logged its epochs twice.
    prepare_mlflow()
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("retried")
    trial_run = client.create_run(experiment).info.run_id
    runs = TrialRuns(client, experiment, "retried", 0, trial_run, flush_seconds=3600)
    for number in (0, 1, 2):  # out of memory in the 4th epoch: the fold starts again
        runs.epoch_ended(epoch(0, number))
    for number in range(4):
        runs.epoch_ended(epoch(0, number))
    probs = np.full((2, 2), 0.5)
    runs.fold_ended(FoldResult(0, 0.65, 3, (), np.array([0, 1]), probs, {}, 1.0, None))

    folds = client.search_runs([experiment], "tags.`hpo.fold` = '0'")
    steps = {
        run.info.run_name: [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        for run in folds
    }
    assert steps == {"trial-0-fold-0": [0, 1, 2], "trial-0-fold-0-retry": [0, 1, 2, 3]}
    status = {run.info.run_name: run.info.status for run in folds}
    assert status == {"trial-0-fold-0": "FAILED", "trial-0-fold-0-retry": "FINISHED"}


def test_trial_mean_and_spread_over_folds(tracked):
    for trial in tracked.study.get_trials(states=(TrialState.COMPLETE,)):
        metrics = tracked.trial_run(trial.number).data.metrics
        assert metrics["cv_optimistic_mean"] == pytest.approx(trial.value)
        assert metrics["cv_optimistic_std"] == pytest.approx(trial.user_attrs["score_std"])
        history = tracked.client.get_metric_history(
            tracked.trial_run(trial.number).info.run_id, "fold_cv_optimistic"
        )
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1]
    assert (
        "cv_optimistic_mean" not in tracked.trial_run(2).data.metrics
    )  # pruned: no mean of all folds


def test_pruned_and_failed_trials_differ_in_status_and_tags(tracked):
    statuses = [tracked.trial_run(n).info.status for n in range(4)]
    assert statuses == ["FINISHED", "FAILED", "KILLED", "FINISHED"]
    failed, pruned = tracked.trial_run(1), tracked.trial_run(2)
    assert "boom (raised by the test)" in failed.data.tags["hpo.fail_reason"]
    assert "traceback.txt" in tracked.artifacts(failed)
    assert "RuntimeError: boom" in tracked.text(failed, "traceback.txt")
    assert pruned.data.tags["hpo.pruned_at"] == "fold 1, epoch 1"
    assert pruned.data.tags["hpo.pruned_reason"] == "pruned by the test"
    assert [f.info.status for f in tracked.folds_of(pruned)] == ["FINISHED", "KILLED"]
    assert [f.info.status for f in tracked.folds_of(failed)] == ["FAILED"]


def test_the_ui_filters_in_the_docs_find_pruned_and_failed_runs(tracked):
    experiment = tracked.kind("study")[0].info.experiment_id

    def names(query: str) -> list[str]:
        found = tracked.client.search_runs([experiment], query, ViewType.ACTIVE_ONLY)
        return sorted(r.info.run_name for r in found)

    assert names("tags.optuna.state = 'PRUNED'") == ["trial-2"]
    assert names("tags.optuna.state = 'FAIL'") == ["trial-1"]
    assert names("attributes.status = 'FAILED' and tags.hpo.kind = 'trial'") == ["trial-1"]
    assert names("tags.hpo.pruned_at LIKE 'fold 1%'") == ["trial-2"]
    assert len(names("tags.hpo.kind = 'trial'")) == 4


def test_trial_artifacts(tracked):
    for trial in tracked.study.get_trials():
        run_ = tracked.trial_run(trial.number)
        assert yaml.safe_load(tracked.text(run_, "config.yaml")) == trial.user_attrs["config"]
    complete = tracked.trial_run(0)
    assert {"config.yaml", "confusion_matrix.png", "oof_predictions.csv"} <= tracked.artifacts(
        complete
    )
    # The confusion matrix only for trials that were the best so far when they ended.
    first, last = tracked.study.trials[0].value, tracked.study.trials[3].value
    last_was_best = "confusion_matrix.png" in tracked.artifacts(tracked.trial_run(3))
    assert last_was_best == (last >= first), (first, last)
    assert "confusion_matrix.png" not in tracked.artifacts(tracked.trial_run(2))  # pruned
    rows = list(csv.DictReader(io.StringIO(tracked.text(complete, "oof_predictions.csv"))))
    assert len(rows) == DIGITS  # two folds cover every sample once
    assert {r["fold"] for r in rows} == {"0", "1"}
    assert len({r["sample"] for r in rows}) == DIGITS
    pruned_rows = tracked.text(tracked.trial_run(2), "oof_predictions.csv").count("\n") - 1
    assert 0 < pruned_rows < DIGITS  # only the fold it finished
    assert "confusion_matrix.png" not in tracked.artifacts(tracked.trial_run(1))


def test_study_artifacts(tracked):
    (study_run,) = tracked.kind("study")
    expected = {
        "data_summary.json",
        "data_summary.txt",
        "space.py",
        "trials.csv",
        "optimization_history.png",
        "param_importances.png",
        "slice.png",
        "parallel_coordinate.png",
    }
    assert expected <= tracked.artifacts(study_run)
    summary = json.loads(tracked.text(study_run, "data_summary.json"))
    assert sum(summary["class_counts"].values()) == DIGITS
    rows = list(csv.DictReader(io.StringIO(tracked.text(study_run, "trials.csv"))))
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "PRUNED", "COMPLETE"]
    assert rows[0]["mlflow_run_id"] == tracked.trial_run(0).info.run_id
    assert study_run.data.metrics["trials_complete"] == 2
    assert study_run.data.metrics["best_cv_optimistic"] == pytest.approx(tracked.study.best_value)
    assert study_run.data.params["folds"] == "2"


def test_versions_commit_and_device_are_recorded(tracked):
    for run_ in (tracked.kind("study")[0], tracked.trial_run(0)):
        tags = run_.data.tags
        for name in ("torch", "timm", "optuna", "mlflow", "albumentations", "python"):
            assert tags[f"hpo.version.{name}"]
        assert tags["hpo.host"]
    assert tracked.trial_run(0).data.tags["hpo.device"] == "cpu"


def test_a_resumed_study_keeps_one_study_run():
    space = write_space(Path.cwd(), "again")
    for target in (2, 3):
        request = RunRequest(space=str(space), trials=target, progress=False, export=False)
        run(request, console=quiet(), hooks=[tracking_hook])
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("again").experiment_id
    runs = client.search_runs([experiment], "tags.hpo.kind != 'fold'")
    (study_run,) = [r for r in runs if r.data.tags["hpo.kind"] == "study"]
    trial_runs = [r for r in runs if r.data.tags["hpo.kind"] == "trial"]
    assert len(trial_runs) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {study_run.info.run_id}
    assert study_run.info.status == "FINISHED"
    history = client.get_metric_history(study_run.info.run_id, "trials_complete")
    assert max(history, key=lambda m: m.step).value == 3


def test_workers_starting_together_settle_on_one_study_run():
    current = prepare(RunRequest(space=str(write_space(Path.cwd(), "race")), progress=False))
    trackers: list[MlflowTracker] = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait()
        trackers.append(MlflowTracker(current))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for tracker in trackers:  # what each does when its next trial starts
        tracker.election.follow(current.study)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("race").experiment_id
    active = client.search_runs([experiment], "tags.hpo.kind = 'study'")
    assert [r.info.run_id for r in active] == [current.study.user_attrs[STUDY_RUN_ATTR]]
    assert {t.study_run_id for t in trackers} == {active[0].info.run_id}


def test_a_worker_joins_the_study_run_another_worker_stored():
    current = prepare(RunRequest(space=str(write_space(Path.cwd(), "join")), progress=False))
    first = MlflowTracker(current)
    mine = first.client.create_run(first.experiment_id, tags={"mlflow.parentRunId": "x"})
    first.election.mine.append(mine.info.run_id)
    other = first.client.create_run(first.experiment_id, tags={"hpo.kind": "study"})
    current.study.set_user_attr(STUDY_RUN_ATTR, other.info.run_id)
    dropped = first.study_run_id
    first.election.follow(current.study)
    assert first.study_run_id == other.info.run_id
    moved = first.client.get_run(mine.info.run_id)
    assert moved.data.tags["mlflow.parentRunId"] == other.info.run_id
    assert first.client.get_run(dropped).info.lifecycle_stage == "deleted"


def test_tracking_none_is_a_plain_hook():
    current = SimpleNamespace(space=SimpleNamespace(settings=StudySettings(tracking="none")))
    assert type(tracking_hook(current)) is Hooks


def test_guard_says_it_once_and_stops_calling(capsys):
    guard = Guard("http://127.0.0.1:9")
    calls = []

    def broken() -> None:
        calls.append(1)
        raise mlflow.exceptions.MlflowException(
            "API request to http://127.0.0.1:9/api failed with exception "
            "HTTPConnectionPool(...): Max retries exceeded (Connection refused)"
        )

    assert guard(broken) is None
    assert guard(broken) is None
    assert guard(lambda: 1) is None
    assert calls == [1]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "MLflow tracking at http://127.0.0.1:9 stopped answering (connection refused); the "
        "study goes on without it."
    ]


def test_stopped_message_keeps_long_reasons_short():
    message = stopped_message("sqlite:///x.db", OSError("disk full " * 50))
    assert len(message) < 300
    assert message.startswith("MLflow tracking at sqlite:///x.db stopped answering (disk full")


def test_http_retry_defaults_respect_the_user(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    prepare_mlflow()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 30


def test_status_and_tags_of_each_outcome():
    def trial(state: TrialState, **attrs) -> optuna.trial.FrozenTrial:
        value = 0.5 if state == TrialState.COMPLETE else None
        return create_trial(state=state, value=value, user_attrs=attrs)

    assert run_status(trial(TrialState.COMPLETE)) == "FINISHED"
    assert run_status(trial(TrialState.PRUNED)) == "KILLED"
    assert run_status(trial(TrialState.FAIL, fail_reason="ValueError: x")) == "FAILED"
    assert run_status(trial(TrialState.FAIL, fail_reason="interrupted (Ctrl-C)")) == "KILLED"
    tags = outcome_tags(trial(TrialState.PRUNED, pruned_at={"fold": 2, "epoch": None}))
    assert tags["hpo.pruned_at"] == "fold 2"
    assert tags["optuna.state"] == "PRUNED"


def test_close_stale_run_kills_a_dead_workers_runs():
    prepare_mlflow()
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("stale")
    trial_run = client.create_run(experiment, tags={"hpo.kind": "trial"}).info.run_id
    fold_run = client.create_run(experiment, tags={"mlflow.parentRunId": trial_run}).info.run_id
    assert close_stale_run(trial_run)
    for run_id in (trial_run, fold_run):
        assert client.get_run(run_id).info.status == "KILLED"
    tags = client.get_run(trial_run).data.tags
    assert tags["optuna.state"] == "FAIL"
    assert "died" in tags["hpo.fail_reason"]
    assert not close_stale_run(trial_run)  # already closed
    assert not close_stale_run("0" * 32)  # unknown run: no error


def test_a_trial_whose_worker_died_has_its_runs_closed_by_the_next_worker(monkeypatch):
    monkeypatch.setattr(storage, "_STALE_LISTENERS", [])
    current = prepare(RunRequest(space=str(write_space(Path.cwd(), "dead")), progress=False))
    tracker = MlflowTracker(current)  # the next worker's tracker: it listens for stale trials
    client, experiment = tracker.client, tracker.experiment_id
    trial_run = client.create_run(experiment, tags={"hpo.kind": "trial"}).info.run_id
    fold_run = client.create_run(experiment, tags={"mlflow.parentRunId": trial_run}).info.run_id
    beating = open_storage(current.place.storage_url, heartbeat=1)
    study = optuna.load_study(study_name="dead", storage=beating)
    trial = study.ask()  # the dead worker's trial: RUNNING, its last heartbeat long ago
    trial.suggest_float("lr", 1e-3, 1e-2, log=True)
    trial.set_user_attr(TRIAL_RUN_ATTR, trial_run)
    beating.record_heartbeat(trial._trial_id)
    # Past the grace period (3 s for a 1 s heartbeat). SQLite's CURRENT_TIMESTAMP, which Optuna
    # stamps heartbeats with, has whole seconds: 3.5 s apart reads as 3 s (not stale) half the time.
    time.sleep(4.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[trial.number].state == TrialState.FAIL
    assert close_stale_trial_run in storage._STALE_LISTENERS  # the tracker registered it
    for run_id in (trial_run, fold_run):
        assert client.get_run(run_id).info.status == "KILLED", (run_id, tracker.uri)
    assert "died" in client.get_run(trial_run).data.tags["hpo.fail_reason"]


def test_the_study_layer_does_not_import_tracking():
    code = (
        "import sys, search.study.identity, search.study.tables\n"
        "print(sorted(m for m in sys.modules if m.startswith('search.tracking')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_storage_urls_are_shown_without_their_password(tracked):
    assert redact_url("postgresql://optuna:s3cret@db:5432/hpo") == (
        "postgresql://optuna:***@db:5432/hpo"
    )
    assert redact_url("postgresql+psycopg://u:p%40ss@db/hpo?sslmode=require") == (
        "postgresql+psycopg://u:***@db/hpo?sslmode=require"
    )
    assert redact_url("postgresql://optuna@db/hpo") == "postgresql://optuna@db/hpo"
    assert redact_url("not a url: kept") == "not a url: kept"
    (study_run,) = tracked.kind("study")
    stored = f"sqlite:///{tracked.folder / 'studies' / 'tiny' / 'study.db'}"
    assert study_run.data.tags["hpo.storage"] == stored


def test_the_experiment_holds_a_view_of_the_trials_best_first_with_their_columns(tracked):
    experiment = tracked.client.get_experiment(tracked.kind("study")[0].info.experiment_id)
    view = json.loads(experiment.tags[VIEW_TAG])
    assert view["searchFilter"] == "tags.`hpo.kind` = 'trial'"
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`cv_optimistic_mean`", False)
    columns = view["selectedColumns"]
    assert columns[0] == "metrics.`cv_optimistic_mean`"
    assert {"params.`lr`", "params.`dropout`", "tags.`optuna.state`"} <= set(columns)
    found = tracked.client.search_runs(
        [experiment.experiment_id],
        view["searchFilter"],
        order_by=["metrics.cv_optimistic_mean DESC"],
    )
    assert found[0].info.run_name == f"trial-{tracked.study.best_trial.number}"


def test_the_end_of_the_run_prints_where_the_trials_are(tracked):
    experiment = tracked.kind("study")[0].info.experiment_id
    (line,) = [line for line in tracked.printed.splitlines() if line.startswith("MLflow runs:")]
    address = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?"
    assert address + "workflowType=machine_learning&viewStateShareKey=hpo-trials" in line
    assert line.endswith("(after `hpo ui tiny`)")


def system_metrics(run_: Run) -> set[str]:
    return {k for k in run_.data.metrics if k.startswith("system/")}


def test_study_and_trial_runs_have_system_metrics(tracked):
    (study_run,) = tracked.kind("study")
    for run_ in (study_run, tracked.trial_run(0), tracked.trial_run(3)):
        found = system_metrics(run_)
        assert "system/cpu_utilization_percentage" in found, (run_.info.run_name, found)
        assert "system/system_memory_usage_megabytes" in found
    assert not any(system_metrics(f) for f in tracked.kind("fold"))


def test_without_psutil_runs_close_and_have_no_system_metrics(monkeypatch, capfd):
    find_spec = system.importlib.util.find_spec

    def hidden(name: str, *args):
        return None if name == "psutil" else find_spec(name, *args)

    monkeypatch.setattr(system.importlib.util, "find_spec", hidden)  # MLflow's check sees it too
    system._say_missing.cache_clear()
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    space = write_space(Path.cwd(), "bare")
    request = RunRequest(
        space=str(space), overrides=["epochs=1"], trials=1, progress=False, export=False
    )
    assert run(request, console=quiet(), hooks=[tracking_hook]) == "done"
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("bare").experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) == 4  # study, trial, 2 folds
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert not any(system_metrics(r) for r in runs)
    assert capfd.readouterr().err.count("system metrics are off: psutil is not installed") == 1


def test_system_metrics_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    assert not system.available()
    assert system.start_monitor("0" * 32, "sqlite:///unused.db") is None


def test_the_image_table_is_a_training_input_of_the_study_and_trial_runs(tracked):
    (study_run,) = tracked.kind("study")
    digests = set()
    for run_ in (study_run, *tracked.kind("trial")):
        (entry,) = tracked.client.get_run(run_.info.run_id).inputs.dataset_inputs
        assert entry.dataset.name == "builtin:digits"
        assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == "training"
        columns = [c["name"] for c in json.loads(entry.dataset.schema)["mlflow_colspec"]]
        assert columns == ["path", "label", "group", "fold", "holdout"]
        assert json.loads(entry.dataset.profile)["num_rows"] == DIGITS
        digests.add(entry.dataset.digest)
    assert len(digests) == 1
    assert not tracked.client.get_run(tracked.kind("fold")[0].info.run_id).inputs.dataset_inputs


def test_the_image_frame_names_labels_groups_and_holdout():
    table = ImageTable(
        source="photos.csv",
        root=Path("/data"),
        paths=("a.png", "b.png", "c.png"),
        labels=np.array([0, 1, 0]),
        classes=("cat", "dog"),
        groups=np.array(["g1", "g2", "g1"]),
        content_id="abc",
    )
    frame = image_frame(table, np.array([1, -1, 0]))
    assert frame.to_dict("records") == [
        {"path": "a.png", "label": "cat", "group": "g1", "fold": 1, "holdout": False},
        {"path": "b.png", "label": "dog", "group": "g2", "fold": -1, "holdout": True},
        {"path": "c.png", "label": "cat", "group": "g1", "fold": 0, "holdout": False},
    ]
    ungrouped = image_frame(replace(table, groups=None), np.array([0, 0, 1]))
    assert list(ungrouped["group"]) == ["", "", ""]

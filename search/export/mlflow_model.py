"""The exported ensemble as an MLflow pyfunc model, logged on the study's run and registered.

The model is logged "from code": its code is `search/export/pyfunc_model.py`, which imports
only ``trainer`` (shipped beside it) and MLflow, and the export folder is its artifact, so
nothing is pickled and the model loads where hpo is not installed. The registered version is
tagged with the export's out-of-fold score and gets the alias ``champion`` when that score beats
the current champion's (registry stages are deprecated; aliases replace them). The holdout
score is tagged as a report, never compared: chosen on it export after export (every resume,
every ``--top-k`` or ``--tta``), the champion's holdout score would be optimistic too.

    mlflow.pyfunc.load_model("models:/<study>@champion")
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec

import trainer
from search import keys
from search.export.report import CV, ExportScores
from search.keys import (
    CHAMPION_ALIAS,
    MODEL_HOLDOUT_TAG,
    MODEL_METRIC_TAG,
    MODEL_SCORE_KIND_TAG,
    MODEL_SCORE_TAG,
)
from trainer import metrics as metric_functions

ARTIFACT = "export"  # the artifact name `pyfunc_model.EnsembleModel.load_context` reads
# Network failures, as they appear inside MLflow's (multi-line) HTTP error texts.
_SYMPTOMS = (
    "Connection refused",
    "Name or service not known",
    "Read timed out",
    "timed out",
    "Max retries exceeded",
)
MODEL_NAME = "ensemble"
_CODE = Path(__file__).with_name("pyfunc_model.py")
_REQUIREMENTS = (
    "mlflow",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pandas",
    "pillow",
    "safetensors",
    "albumentations",
    "tqdm",
)


@dataclass(frozen=True)
class Headline:
    """The score versions are compared on (``kind``: the CV label for the out-of-fold score),
    and the holdout score, which is tagged as a report and never compared."""

    metric: str
    kind: str
    value: float
    holdout: float | None = None


@dataclass(frozen=True)
class Logged:
    """A registered model version and whether it became the champion."""

    uri: str
    version: str
    champion: bool


def log_ensemble(
    export_dir: Path,
    *,
    study_name: str,
    run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    headline: Headline | None = None,
) -> Logged:
    """Log the export as a pyfunc model, with its scores, and register it as ``study_name``.

    Args:
        export_dir: The export folder (see `search.export.entry_points`).
        study_name: The study; the registered model's name and, without ``run_id``, the name
            of the MLflow experiment.
        run_id: The study's MLflow run (study user attribute ``hpo.mlflow_run_id``); when
            None, the run named ``<study>-export`` in the study's experiment (made once).
        metrics: Scores to log on the run.
        headline: The export's headline score: tagged on the version and compared with the
            champion's (without it the version never becomes the champion).

    Returns:
        The registered version (URI ``models:/<study>/<version>``) and whether it is now the
        version the alias ``champion`` points to.
    """
    with _study_run(study_name, run_id):
        if metrics:
            mlflow.log_metrics(dict(metrics))
        mlflow.log_artifact(str(Path(export_dir) / "report.md"), artifact_path=ARTIFACT)
        with warnings.catch_warnings():
            # No input example on purpose: inputs are files or arrays, not a fixed schema.
            warnings.filterwarnings("ignore", message=".*input example.*")
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(_CODE),
                artifacts={ARTIFACT: str(export_dir)},
                code_paths=[_package_dir(trainer)],
                signature=_signature(),
                pip_requirements=_requirements(),
                registered_model_name=study_name,
            )
    version = str(info.registered_model_version)
    champion = headline is not None and promote(study_name, version, headline)
    return Logged(f"models:/{study_name}/{version}", version, champion)


def promote(name: str, version: str, headline: Headline) -> bool:
    """Tag ``version`` with ``headline``; make it the champion if it beats the current one.

    A champion without a comparable score (another metric, or no score tag) is replaced; on a
    tie the current champion stays.
    """
    client = mlflow.MlflowClient()
    tags = {
        MODEL_SCORE_TAG: repr(headline.value),
        MODEL_SCORE_KIND_TAG: headline.kind,
        MODEL_METRIC_TAG: headline.metric,
    }
    if headline.holdout is not None:
        tags[MODEL_HOLDOUT_TAG] = repr(headline.holdout)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        current = None
    if current is not None and not _beats(headline, current.tags):
        return False
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return True


def _beats(headline: Headline, champion: Mapping[str, str]) -> bool:
    # A champion chosen on another metric or kind of score (older versions of hpo chose on
    # the holdout) cannot be compared with: the new version replaces it.
    if champion.get(MODEL_METRIC_TAG) != headline.metric or MODEL_SCORE_TAG not in champion:
        return True
    if champion.get(MODEL_SCORE_KIND_TAG, headline.kind) != headline.kind:
        return True
    best = float(champion[MODEL_SCORE_TAG])
    return metric_functions.is_better(headline.metric, headline.value, best)


def scored(scores: ExportScores) -> Headline:
    """What a version of the export is compared on: its out-of-fold score (the holdout is kept
    as a report)."""
    kind, value = scores.headline()
    holdout = value if kind == "holdout" else None
    return Headline(scores.metric, CV, float(scores.rows[0].cv.get(scores.metric)), holdout)


def champion_line(logged: Logged, headline: Headline, *, study: str, folder: Path) -> str:
    """The line that says which version is the champion now, and on what it was chosen."""
    if not logged.champion:
        status = (
            f"the champion stays an earlier version with a better out-of-fold {headline.metric}; "
            f"{folder} holds this version, not the champion"
        )
    else:
        note = (
            "optimistic; the study has no holdout"
            if headline.holdout is None
            else f"optimistic; its holdout {headline.holdout:.4f} is only reported, not used "
            "to choose, so that it stays an honest estimate"
        )
        status = (
            f"now the champion: models:/{study}@champion, chosen on its out-of-fold "
            f"{headline.metric} {headline.value:.4f} ({note})"
        )
    return f"MLflow model: {logged.uri} (registered as '{study}'; {status})"


def failure_line(err: BaseException, *, folder: Path, study: str) -> str:
    """The one line that says the export was not logged, why, and what to do about it."""
    return (
        f"The export was not logged to MLflow at {mlflow.get_tracking_uri()} ({_gist(err)}); "
        f"it is complete in {folder}: run `hpo export {study}` to log it once MLflow answers."
    )


def _gist(err: BaseException) -> str:
    """What went wrong, in a few words: MLflow's own text for an HTTP failure runs to lines."""
    text = " ".join(str(err).split()) or type(err).__name__
    status = re.search(r"error code (\d{3})", text)
    if status:
        return f"HTTP status {status.group(1)}"
    gist = next((s.lower() for s in _SYMPTOMS if s.lower() in text.lower()), text)
    return gist if len(gist) <= 160 else gist[:157] + "..."


def _signature() -> ModelSignature:
    # Only params: any input passes to `predict`, which checks it itself.
    return ModelSignature(inputs=None, params=ParamSchema([ParamSpec("tta", "string", None)]))


def _package_dir(package: Any) -> str:
    return str(Path(package.__file__).parent)


def _requirements() -> list[str]:
    pins = []
    for name in _REQUIREMENTS:
        try:
            # A local build tag (+cpu, +cu124) is not on PyPI; pin the public version.
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


@contextmanager
def _study_run(study_name: str, run_id: str | None) -> Iterator[None]:
    """Make the study's run active for the block, restoring its status afterwards."""
    active = mlflow.active_run()
    if run_id is not None and active is not None and active.info.run_id == run_id:
        yield
        return
    run_id = run_id or _export_run(study_name)
    client = mlflow.MlflowClient()
    status = client.get_run(run_id).info.status
    with _quiet_artifacts(), mlflow.start_run(run_id=run_id):
        yield
    if status != "RUNNING":
        client.set_terminated(run_id, status)


def _export_run(study_name: str) -> str:
    """Without a study run: the export run of the experiment named after the study (made once)."""
    client = mlflow.MlflowClient()
    experiment = _experiment(client, study_name)
    query = f"tags.`hpo.study` = '{study_name}' and tags.`hpo.role` = 'export'"
    found = client.search_runs([experiment], query, max_results=1)
    if found:
        return found[0].info.run_id
    tags = {keys.STUDY_TAG: study_name, keys.ROLE_TAG: "export"}
    run = client.create_run(experiment, tags=tags, run_name=f"{study_name}-export")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _experiment(client: mlflow.MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name)
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


@contextmanager
def _quiet_artifacts() -> Iterator[None]:
    """No per-file progress bars while the model's files are copied (they flood a log)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before

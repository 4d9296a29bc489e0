"""What `search.tracking.tracker` writes to MLflow: tags, metric values and text files.

Everything here is pure (no MLflow calls): it turns trials, configs and predictions into tag and
metric dictionaries and text; the figures are drawn in `search.tracking.figures`. Every name is
spelled once in `search.keys`.

Tags a user filters on (see docs/mlflow.md): ``hpo.kind`` (study, trial, fold),
``optuna.trial_number``, ``optuna.state`` (RUNNING, COMPLETE, PRUNED, FAIL), ``hpo.pruned_at``,
``hpo.pruned_reason`` and ``hpo.fail_reason``. Run status: COMPLETE -> FINISHED, PRUNED ->
KILLED (stopped early on purpose), FAIL -> FAILED (KILLED when interrupted or its worker died).
"""

from __future__ import annotations

import csv
import getpass
import io
import platform
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from optuna.trial import FrozenTrial, TrialState

from search import keys
from search.study.storage import redact_url

if TYPE_CHECKING:
    import optuna

    from search.context import StudyRun
    from trainer.config import TrainConfig
    from trainer.types import EpochMetrics, FoldResult

# Distributions whose versions decide whether a trial can be reproduced.
_VERSIONED = (
    "hpo",
    "torch",
    "torchvision",
    "timm",
    "optuna",
    "mlflow",
    "albumentations",
    "scikit-learn",
    "numpy",
)
# Above this many classes a per-class probability column per sample makes the CSV huge.
_MAX_PROB_COLUMNS = 20
_TAG_LIMIT = 5000


@dataclass(frozen=True)
class FoldPredictions:
    """The out-of-fold probabilities of one trained fold."""

    fold: int
    indices: np.ndarray
    probs: np.ndarray


def study_run_tags(run: StudyRun, key: str) -> dict[str, str]:
    """What identifies the study run: its kind, key, data, metric, splits and storage."""
    attrs, space = run.study.user_attrs, run.space
    return {
        keys.KIND_TAG: keys.KIND_STUDY,
        keys.STUDY_TAG: run.place.name,
        keys.STUDY_KEY_TAG: key,
        keys.DATA_TAG: str(space.settings.data),
        keys.METRIC_TAG: space.settings.metric,
        keys.DIRECTION_TAG: run.study.direction.name.lower(),
        keys.SPLITS_ID_TAG: str(attrs.get(keys.SPLITS_ID_ATTR)),
        keys.SEARCHED_TAG: ",".join(space.searched),
        keys.STORAGE_TAG: redact_url(run.place.storage_url),
    }


def study_params(run: StudyRun) -> dict[str, str]:
    """Settings that define the study: the same on every resume (MLflow params cannot change)."""
    return {k: param_value(v) for k, v in run.space.settings.identity().items()}


def trial_run_tags(run: StudyRun, trial: optuna.Trial, config: TrainConfig) -> dict[str, str]:
    """What identifies a trial run: its number, state so far, device and worker."""
    return {
        keys.KIND_TAG: keys.KIND_TRIAL,
        keys.STUDY_TAG: run.place.name,
        keys.TRIAL_NUMBER_TAG: str(trial.number),
        keys.STATE_TAG: "RUNNING",
        keys.DEVICE_TAG: describe_device(config.device),
        keys.WORKER_TAG: str(run.request.worker),
    }


def fold_run_tags(study: str, number: int, fold: int) -> dict[str, str]:
    """What identifies a fold run (its parent is set by the caller)."""
    return {
        keys.KIND_TAG: keys.KIND_FOLD,
        keys.STUDY_TAG: study,
        keys.TRIAL_NUMBER_TAG: str(number),
        keys.FOLD_TAG: str(fold),
    }


def epoch_values(row: EpochMetrics) -> dict[str, float]:
    """An epoch's metrics by MLflow name (``seconds`` is the epoch's wall time)."""
    values = row.scalars()
    values[keys.EPOCH_SECONDS_METRIC] = values.pop("seconds")  # EpochMetrics' field
    return values


def fold_values(result: FoldResult) -> dict[str, float]:
    """A finished fold's summary: best score and epoch, epochs trained, wall time."""
    return {
        keys.BEST_SCORE_METRIC: result.score,
        keys.BEST_EPOCH_METRIC: result.best_epoch,
        keys.EPOCHS_METRIC: result.epochs_run,
        keys.FOLD_SECONDS_METRIC: result.seconds,
    }


def trial_values(trial: FrozenTrial) -> dict[str, float | None]:
    """A trial's summary; the mean and spread over folds only when every fold was trained."""
    attrs = trial.user_attrs
    values = {
        keys.EPOCHS_METRIC: attrs.get(keys.EPOCHS),
        keys.TRIAL_SECONDS_METRIC: attrs.get(keys.SECONDS),
    }
    if trial.state == TrialState.COMPLETE:
        values[keys.SCORE_MEAN_METRIC] = trial.value
        values[keys.SCORE_STD_METRIC] = attrs.get(keys.SCORE_STD)
    return values


def study_values(study: optuna.Study, trials: Sequence[FrozenTrial]) -> dict[str, float | None]:
    """Trials per outcome and the best value so far."""
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    prefix = keys.TRIALS_METRIC_PREFIX
    values: dict[str, float | None] = {prefix + k.lower(): v for k, v in counts.items()}
    if counts["COMPLETE"]:
        values[keys.BEST_SCORE_METRIC] = study.best_value
    return values


def outcome_tags(trial: FrozenTrial) -> dict[str, str]:
    """The tags that tell a trial's outcome: state, where and why it was pruned or failed."""
    attrs = trial.user_attrs
    tags = {keys.STATE_TAG: trial.state.name}
    if trial.state == TrialState.PRUNED:
        where = pruned_at(trial) or "unknown"
        why = attrs.get(keys.PRUNED_REASON, "pruned")
        tags.update({keys.PRUNED_AT_TAG: where, keys.PRUNED_REASON_TAG: why})
        tags[keys.NOTE_TAG] = f"Pruned at {where}: {why}"
    elif trial.state == TrialState.FAIL:
        why = attrs.get(keys.FAIL_REASON_ATTR, "unknown error")
        tags.update({keys.FAIL_REASON_TAG: why, keys.NOTE_TAG: f"Failed: {why}"})
    return {k: short_tag(v) for k, v in tags.items()}


def run_status(trial: FrozenTrial) -> str:
    """The MLflow status of a trial's run: FINISHED, KILLED (pruned, interrupted) or FAILED."""
    if trial.state == TrialState.COMPLETE:
        return "FINISHED"
    if trial.state == TrialState.FAIL:
        interrupted = str(trial.user_attrs.get(keys.FAIL_REASON_ATTR, "")).startswith("interrupted")
        return "KILLED" if interrupted else "FAILED"
    return "KILLED"


def config_yaml(config: TrainConfig) -> str:
    """The resolved config as YAML, in field order (what the trial actually trained with)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def param_value(value: Any) -> str:
    """An MLflow param value: ``None`` stays readable as ``None``."""
    return str(value)


def short_tag(text: str) -> str:
    """A tag value within MLflow's length limit."""
    return text if len(text) <= _TAG_LIMIT else text[: _TAG_LIMIT - 3] + "..."


def oof_csv(
    predictions: Sequence[FoldPredictions],
    labels: np.ndarray,
    classes: Sequence[str],
    paths: Sequence[str],
) -> str:
    """One row per out-of-fold sample: where it is, its fold, label, prediction, probabilities."""
    with_probs = len(classes) <= _MAX_PROB_COLUMNS
    header = ["sample", "path", "fold", "label", "prediction", "confidence"]
    header += [f"p_{name}" for name in classes] if with_probs else []
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for part in predictions:
        predicted = part.probs.argmax(axis=1)
        for row, (index, guess) in enumerate(zip(part.indices, predicted, strict=True)):
            probs = part.probs[row]
            line = [int(index), paths[index], part.fold, classes[labels[index]], classes[guess]]
            line.append(f"{probs[guess]:.5f}")
            line += [f"{p:.5f}" for p in probs] if with_probs else []
            writer.writerow(line)
    return out.getvalue()


def trials_csv(trials: Sequence[FrozenTrial]) -> str:
    """The study's trials as a table: state, value, spread, effort, parameters and outcome."""
    params = sorted({name for t in trials for name in t.params})
    # Named like the trial runs' metrics: a cross-validated mean is optimistic (see keys.py).
    header = ["number", "state", keys.SCORE_MEAN_METRIC, keys.SCORE_STD_METRIC]
    header += ["folds", "epochs", "seconds"]
    header += [f"params_{name}" for name in params]
    # A pruned trial's score at its rung is no cross-validated mean: it gets its own column.
    header += ["datetime_start", "datetime_complete", "pruned_at", "pruned_score"]
    header += ["note", "mlflow_run_id"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        writer.writerow(
            [
                t.number,
                t.state.name,
                t.value if t.state == TrialState.COMPLETE else "",
                attrs.get(keys.SCORE_STD, ""),
                len(attrs.get(keys.FOLD_SCORES, [])),
                attrs.get(keys.EPOCHS, ""),
                attrs.get(keys.SECONDS, ""),
                *(t.params.get(name, "") for name in params),
                t.datetime_start or "",
                t.datetime_complete or "",
                pruned_at(t) or "",
                (attrs.get(keys.PRUNED_AT) or {}).get("score", ""),
                attrs.get(keys.PRUNED_REASON) or attrs.get(keys.FAIL_REASON_ATTR) or "",
                attrs.get(keys.TRIAL_RUN_ATTR, ""),
            ]
        )
    return out.getvalue()


def pruned_at(trial: FrozenTrial) -> str | None:
    """``fold 2, epoch 3`` (1-based epoch, 0-based fold as in the fold runs), or None."""
    where = trial.user_attrs.get(keys.PRUNED_AT)
    if not where:
        return None
    epoch = where.get("epoch")
    return f"fold {where['fold']}" + ("" if epoch is None else f", epoch {epoch}")


def version_tags() -> dict[str, str]:
    """``hpo.version.<distribution>`` for every package that shapes a trial, and Python."""
    tags = {keys.VERSION_TAG_PREFIX + "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            tags[keys.VERSION_TAG_PREFIX + name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return tags


@cache
def git_tags(folder: Path) -> dict[str, str]:
    """The commit (and whether the tree has changes) of the git checkout holding ``folder``."""
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        dirty = bool(_git(folder, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, or too slow
        return {}
    return {keys.GIT_COMMIT_TAG: commit, keys.GIT_DIRTY_TAG: str(dirty).lower()}


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def machine_tags() -> dict[str, str]:
    """Who ran it where: MLflow's user and source tags and the host name."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no user name in containers without /etc/passwd entries
        user = "unknown"
    return {
        keys.USER_TAG: user,
        keys.SOURCE_NAME_TAG: "hpo",
        keys.SOURCE_TYPE_TAG: "LOCAL",
        keys.HOST_TAG: socket.gethostname(),
    }


@cache
def describe_device(requested: str | None) -> str:
    """The device a config trains on, with the GPU's name (``cuda:0 (NVIDIA H100 ...)``)."""
    import torch

    from trainer.device import pick_device
    from trainer.errors import ConfigError

    try:
        device = pick_device(requested)
    except ConfigError:
        return f"{requested} (not available)"
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"

"""What `search.tracking.tracker` writes to MLflow: tags, metric values, files and figures.

Everything here is pure (no MLflow calls): it turns trials, configs and predictions into tag and
metric dictionaries, text and matplotlib figures. Figures are `matplotlib.figure.Figure` objects
rather than pyplot figures, so tracking never changes the process's plotting backend or leaves
figures open.

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
import statistics
import subprocess
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from optuna.trial import FrozenTrial, TrialState

from trainer.metrics import confusion

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

    from search.context import StudyRun
    from trainer.config import TrainConfig
    from trainer.types import EpochMetrics, FoldResult

KIND, STUDY, KEY, FOLD = "hpo.kind", "hpo.study", "hpo.study_key", "hpo.fold"
NUMBER, STATE = "optuna.trial_number", "optuna.state"
PRUNED_AT, PRUNED_REASON, FAIL_REASON = "hpo.pruned_at", "hpo.pruned_reason", "hpo.fail_reason"
PARENT, NOTE = "mlflow.parentRunId", "mlflow.note.content"

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
_MAX_ANNOTATED_CLASSES = 20
_MAX_TICK_CLASSES = 50
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
        KIND: "study",
        STUDY: run.place.name,
        KEY: key,
        "hpo.data": str(space.settings["data"]),
        "hpo.metric": space.config({}).metric,
        "hpo.direction": run.study.direction.name.lower(),
        "hpo.splits_id": str(attrs.get("hpo.splits_id")),
        "hpo.searched": ",".join(space.searched),
        "hpo.storage": redacted(run.place.storage_url),
    }


def study_params(run: StudyRun) -> dict[str, str]:
    """Settings that define the study: the same on every resume (MLflow params cannot change)."""
    from search.space.settings import SETTINGS

    settings = run.space.settings
    names = [k for k in SETTINGS if k != "data" and not SETTINGS[k].run_control]
    return {k: param_value(settings[k]) for k in names}


def trial_run_tags(run: StudyRun, trial: optuna.Trial, config: TrainConfig) -> dict[str, str]:
    """What identifies a trial run: its number, state so far, device and worker."""
    return {
        KIND: "trial",
        STUDY: run.place.name,
        NUMBER: str(trial.number),
        STATE: "RUNNING",
        "hpo.device": describe_device(config.device),
        "hpo.worker": str(run.request.worker),
    }


def fold_run_tags(study: str, number: int, fold: int) -> dict[str, str]:
    """What identifies a fold run (its parent is set by the caller)."""
    return {KIND: "fold", STUDY: study, NUMBER: str(number), FOLD: str(fold)}


def epoch_values(row: EpochMetrics) -> dict[str, float]:
    """An epoch's metrics by MLflow name (``seconds`` is the epoch's wall time)."""
    values = row.scalars()
    values["epoch_seconds"] = values.pop("seconds")
    return values


def fold_values(result: FoldResult) -> dict[str, float]:
    """A finished fold's summary: best score and epoch, epochs trained, wall time."""
    return {
        "best_score": result.score,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "fold_seconds": result.seconds,
    }


def trial_values(trial: FrozenTrial) -> dict[str, float | None]:
    """A trial's summary; the mean and spread over folds only when every fold was trained."""
    values = {
        "epochs": trial.user_attrs.get("epochs"),
        "trial_seconds": trial.user_attrs.get("seconds"),
    }
    if trial.state == TrialState.COMPLETE:
        values.update(score_mean=trial.value, score_std=trial.user_attrs.get("score_std"))
    return values


def study_values(study: optuna.Study, trials: Sequence[FrozenTrial]) -> dict[str, float | None]:
    """Trials per outcome and the best value so far."""
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    values: dict[str, float | None] = {f"trials_{k.lower()}": v for k, v in counts.items()}
    if counts["COMPLETE"]:
        values["best_score"] = study.best_value
    return values


def outcome_tags(trial: FrozenTrial) -> dict[str, str]:
    """The tags that tell a trial's outcome: state, where and why it was pruned or failed."""
    attrs = trial.user_attrs
    tags = {STATE: trial.state.name}
    if trial.state == TrialState.PRUNED:
        tags[PRUNED_AT] = pruned_at(trial) or "unknown"
        tags[PRUNED_REASON] = attrs.get("pruned_reason", "pruned")
        tags[NOTE] = f"Pruned at {tags[PRUNED_AT]}: {tags[PRUNED_REASON]}"
    elif trial.state == TrialState.FAIL:
        tags[FAIL_REASON] = attrs.get("fail_reason", "unknown error")
        tags[NOTE] = f"Failed: {tags[FAIL_REASON]}"
    return {k: short_tag(v) for k, v in tags.items()}


def run_status(trial: FrozenTrial) -> str:
    """The MLflow status of a trial's run: FINISHED, KILLED (pruned, interrupted) or FAILED."""
    if trial.state == TrialState.COMPLETE:
        return "FINISHED"
    if trial.state == TrialState.FAIL:
        interrupted = str(trial.user_attrs.get("fail_reason", "")).startswith("interrupted")
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


def confusion_figure(
    predictions: Sequence[FoldPredictions], labels: np.ndarray, classes: Sequence[str], title: str
) -> Figure:
    """The out-of-fold confusion matrix: counts, coloured by the share of each true class."""
    from matplotlib.figure import Figure

    indices = np.concatenate([p.indices for p in predictions])
    predicted = np.concatenate([p.probs.argmax(axis=1) for p in predictions])
    matrix = confusion(labels[indices], predicted, len(classes))
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = [name[:14] for name in classes] if len(classes) <= _MAX_TICK_CLASSES else []
    # Fixed margins sized for the tick labels: a layout engine or a colour bar would double the
    # drawing time, which is paid after every trial.
    side, margin = min(3 + 0.4 * len(classes), 16), 0.6 + 0.09 * max(map(len, names), default=0)
    fig = Figure(figsize=(side + margin + 0.3, side + margin + 0.5))
    width, height = fig.get_size_inches()
    fig.subplots_adjust(margin / width, margin / height, 1 - 0.3 / width, 1 - 0.5 / height)
    ax = fig.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= _MAX_ANNOTATED_CLASSES:
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if shares[i, j] > 0.6 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    if names:
        ax.set_xticks(range(len(classes)), names, rotation=90)
        ax.set_yticks(range(len(classes)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (colour: share of the class)")
    ax.set_title(title, fontsize=10)
    return fig


def trials_csv(trials: Sequence[FrozenTrial]) -> str:
    """The study's trials as a table: state, value, spread, effort, parameters and outcome."""
    params = sorted({name for t in trials for name in t.params})
    header = ["number", "state", "value", "score_std", "folds", "epochs", "seconds"]
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
                attrs.get("score_std", ""),
                len(attrs.get("fold_scores", [])),
                attrs.get("epochs", ""),
                attrs.get("seconds", ""),
                *(t.params.get(name, "") for name in params),
                t.datetime_start or "",
                t.datetime_complete or "",
                pruned_at(t) or "",
                (attrs.get("pruned_at") or {}).get("score", ""),
                attrs.get("pruned_reason") or attrs.get("fail_reason") or "",
                attrs.get("mlflow_run_id", ""),
            ]
        )
    return out.getvalue()


def pruned_at(trial: FrozenTrial) -> str | None:
    """``fold 2, epoch 3`` (1-based epoch, 0-based fold as in the fold runs), or None."""
    where = trial.user_attrs.get("pruned_at")
    if not where:
        return None
    epoch = where.get("epoch")
    return f"fold {where['fold']}" + ("" if epoch is None else f", epoch {epoch}")


def history_figure(trials: Sequence[FrozenTrial], *, metric: str, maximize: bool) -> Figure:
    """Each trial's value by trial number, the best so far, and pruned trials' partial means."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.user_attrs.get("fold_scores")]
    if pruned:
        xs = [t.number for t in pruned]
        ys = [statistics.fmean(t.user_attrs["fold_scores"]) for t in pruned]
        ax.scatter(xs, ys, marker="x", color="0.6", label="pruned (mean of trained folds)")
    if done:
        values = [t.value for t in done]
        best = np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)
        ax.scatter([t.number for t in done], values, color="tab:blue", label="complete")
        ax.step([t.number for t in done], best, where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} (mean over folds)")
    ax.set_title(f"Optimisation history ({'maximised' if maximize else 'minimised'})")
    if done or pruned:
        ax.legend(loc="best")
    return fig


def importance_figure(study: optuna.Study) -> Figure | None:
    """Optuna's parameter importances as bars; None until they can be computed."""
    import optuna
    from matplotlib.figure import Figure

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "too few trials": the plot says what it can
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # e.g. no parameter varies yet
        return None
    if not importances:
        return None
    names = list(importances)[::-1]
    fig = Figure(figsize=(7, 1.2 + 0.4 * len(names)), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (Optuna's default evaluator)")
    ax.set_title(f"Parameter importances ({len(complete)} complete trials)")
    return fig


def version_tags() -> dict[str, str]:
    """``hpo.version.<distribution>`` for every package that shapes a trial, and Python."""
    tags = {"hpo.version.python": platform.python_version()}
    for name in _VERSIONED:
        try:
            tags[f"hpo.version.{name}"] = metadata.version(name)
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
    return {"mlflow.source.git.commit": commit, "hpo.git_dirty": str(dirty).lower()}


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
        "mlflow.user": user,
        "mlflow.source.name": "hpo",
        "mlflow.source.type": "LOCAL",
        "hpo.host": socket.gethostname(),
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


def safe_figure(build: Callable[..., Figure | None], *args: Any, **kwargs: Any) -> Figure | None:
    """``build(...)``, or None if drawing failed (a missing plot must not stop a study)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build(*args, **kwargs)
    except Exception:
        return None


def redacted(url: str) -> str:
    """``scheme://***@host/...``: a URL without its credentials."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest

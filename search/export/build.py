"""Building an export: choose the trials, copy their fold weights, score, write, publish.

See `search.export.study_export` for what an export holds and the entry points that use this
module; this one imports the whole trainer, so the `hpo` command imports it only when it exports.
"""

from __future__ import annotations

import ast
import functools
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial
from rich.console import Console

from search.export.checkpoints import load_oof, oof_path, top_trials, trial_dir, weights_path
from search.export.report import (
    ExportScores,
    best_space_text,
    flat_metrics,
    holdout_rows,
    markdown,
    measure,
    show,
)
from search.export.study_export import NothingToExport
from search.space.settings import SETTINGS
from search.space.spacefile import load_space
from search.study.splits import holdout_indices
from search.study.storage import StudyError, StudyPlace, load_hpo_study, stored_folds
from trainer.augment import tta_views
from trainer.config import TrainConfig
from trainer.ensemble import Ensemble, Manifest, MemberSpec, file_sha256
from trainer.models import build_model, normalization, resolve_architecture

if TYPE_CHECKING:
    from search.context import StudyRun
    from trainer.sources import ImageTable

MEMBERS = "members"


@dataclass(frozen=True)
class StudySource:
    """What an export reads: the study, its place and settings, and its data on demand."""

    study: optuna.Study
    place: StudyPlace
    settings: Mapping[str, Any]
    labels: Callable[[], np.ndarray]
    images: Callable[[int], np.ndarray]


@dataclass(frozen=True)
class ExportResult:
    """A written export, its scores, and its MLflow model URI when it was logged."""

    folder: Path
    study: str
    trials: tuple[int, ...]
    members: tuple[str, ...]
    scores: ExportScores
    model_uri: str | None = None


def run_source(run: StudyRun) -> StudySource:
    """What the export of a study that just ran reads: everything is in memory already."""
    settings = run.space.settings
    return StudySource(run.study, run.place, settings, lambda: run.table.labels, _images(run))


def _images(run: StudyRun) -> Callable[[int], np.ndarray]:
    return lambda size: run.data.images(size).images


def storage_source(name: str, *, storage: str | None, data: str | None) -> StudySource:
    """What the export of a study found by name in its storage reads; data is read lazily.

    Raises:
        StudyError: The study does not exist.
    """
    place = StudyPlace.of(name, storage)
    study = load_hpo_study(place)
    settings = stored_settings(study)
    reader = _DataReader(study, data or settings["data"])
    return StudySource(study, place, settings, reader.labels, reader.images)


def export(
    source: StudySource, *, top_k: int | None, tta: str | None, console: Console, mlflow: bool
) -> ExportResult:
    """Build the export, print its scores and, if asked, log it to MLflow."""
    result = build_export(source, top_k=top_k, tta=tta)
    show(result.scores, console, folder=result.folder)
    return log_to_mlflow(result, source.study, console) if mlflow else result


def stored_settings(study: optuna.Study) -> dict[str, Any]:
    """The study's settings from its storage alone.

    Identity settings come from the stored identity. Run control (``top_k``, ``tta``,
    ``tracking``) is not part of it: it comes from the study user attribute ``hpo.run_control``
    (the last run's values) when `hpo run` stored one, else from the literal assignments of the
    stored space file, read without running it.
    """
    attrs = study.user_attrs
    settings = {name: s.default for name, s in SETTINGS.items()}
    settings.update(_literal_settings(attrs.get("hpo.space_source", "")))
    settings.update(attrs.get("hpo.run_control", {}))
    settings.update(attrs["hpo.identity"]["settings"])
    settings["data"] = attrs["hpo.data"]
    return settings


def _literal_settings(source: str) -> dict[str, Any]:
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return {}
    found = {}
    for node in body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in SETTINGS:
            try:
                found[target.id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return found


class _DataReader:
    """The study's data, read once and only when needed (labels for the holdout, images)."""

    def __init__(self, study: optuna.Study, data: str) -> None:
        self.study, self.data = study, data

    @functools.cached_property
    def table(self) -> ImageTable:
        from trainer.sources import load_table

        table = load_table(self.data)
        if table.content_id != self.study.user_attrs["hpo.content_id"]:
            raise StudyError(
                f"Data '{self.data}' is not the data study '{self.study.study_name}' ran on "
                "(files, labels or groups differ); pass the study's data with --data."
            )
        return table

    def labels(self) -> np.ndarray:
        return self.table.labels

    def images(self, size: int) -> np.ndarray:
        from trainer.cache import cached_images

        return cached_images(self.table, size, progress=False).images


# --- building ----------------------------------------------------------------------------------


def build_export(source: StudySource, *, top_k: int | None, tta: str | None) -> ExportResult:
    """Score the ensemble of the top trials and write the export folder (swapped in whole).

    Raises:
        ConfigError: ``tta`` is not a TTA mode.
        NothingToExport: No complete trial, or a chosen trial whose checkpoints are gone.
    """
    tta = tta or source.settings["tta"]
    tta_views(tta)  # a wrong mode fails before any work
    trials = _chosen(source, top_k or source.settings["top_k"])
    target = source.place.export_dir
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = _write_members(source, trials, staging, tta)
        scores = _score(source, trials, Ensemble.load(staging), tta)
        _write_best_space(staging / "best_space.py", source, trials[0], tta)
        (staging / "report.md").write_text(markdown(scores, manifest))
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    names = tuple(m.name for m in manifest.members)
    return ExportResult(target, source.place.name, scores.trials, names, scores)


def _chosen(source: StudySource, top_k: int) -> list[FrozenTrial]:
    name = source.place.name
    trials = top_trials(source.study, top_k)
    if not trials:
        raise NothingToExport(
            f"Study '{name}' has no complete trial yet (pruned and failed trials have no "
            "ensemble); run `hpo run` until one completes, then export."
        )
    kept = next((i for i, t in enumerate(trials) if not _has_checkpoints(source, t)), None)
    if kept == 0:
        folder = trial_dir(source.place.folder, trials[0].number)
        raise NothingToExport(
            f"The best trial ({trials[0].number}) of study '{name}' has no fold checkpoints in "
            f"{folder} (deleted, or not written: see its checkpoint_error); run `hpo run` with "
            "more trials so that a trial with checkpoints becomes the best."
        )
    if kept is not None:
        raise NothingToExport(
            f"Only the {kept} best trials of study '{name}' still have their fold checkpoints "
            f"(a study keeps them for its top_k best trials); export with --top-k {kept}, "
            f"or set top_k={top_k} in the space file before running."
        )
    return trials


def _has_checkpoints(source: StudySource, trial: FrozenTrial) -> bool:
    folder = trial_dir(source.place.folder, trial.number)
    return all(oof_path(folder, k).is_file() for k in range(source.settings["folds"]))


def _write_members(
    source: StudySource, trials: list[FrozenTrial], staging: Path, tta: str
) -> Manifest:
    (staging / MEMBERS).mkdir(parents=True)
    classes = tuple(source.study.user_attrs["hpo.classes"])
    specs = [
        spec for trial in trials for spec in _trial_members(source, trial, staging, len(classes))
    ]
    info = {"study": source.place.name, "metric": _metric(trials), "trials": _numbers(trials)}
    manifest = Manifest(classes, tuple(specs), tta=tta, info=info)
    manifest.write(staging)
    return manifest


def _trial_members(
    source: StudySource, trial: FrozenTrial, staging: Path, classes: int
) -> list[MemberSpec]:
    config = TrainConfig(**trial.user_attrs["config"])
    # Stored so that the export predicts without the hub or folder an hf-hub: or local-dir:
    # backbone came from (timm reads its config.json even without weights).
    architecture = resolve_architecture(config.backbone)
    # The normalisation the trainer used; building without weights downloads nothing.
    model = build_model(config.replace(pretrained=False), classes, architecture=architecture)
    mean, std = normalization(model)
    specs = []
    for fold in range(source.settings["folds"]):
        name = f"trial{trial.number}-fold{fold}"
        copy = staging / MEMBERS / f"{name}.safetensors"
        shutil.copyfile(weights_path(trial_dir(source.place.folder, trial.number), fold), copy)
        relative = f"{MEMBERS}/{copy.name}"
        specs.append(
            MemberSpec(
                name,
                relative,
                config.to_dict(),
                mean,
                std,
                file_sha256(copy),
                trial=trial.number,
                fold=fold,
                architecture=architecture,
            )
        )
    return specs


def _metric(trials: list[FrozenTrial]) -> str:
    return str(trials[0].user_attrs["config"]["metric"])


def _numbers(trials: list[FrozenTrial]) -> list[int]:
    return [t.number for t in trials]


def _score(
    source: StudySource, trials: list[FrozenTrial], ensemble: Ensemble, tta: str
) -> ExportScores:
    folders = [trial_dir(source.place.folder, t.number) for t in trials]
    labels, per_trial = _oof(folders, source.settings["folds"])
    holdout = holdout_indices(stored_folds(source.study))
    compared = tta if tta != "none" else "hflip"
    rows = []
    if len(holdout):
        by_size = {size: source.images(size)[holdout] for size in ensemble.sizes}
        rows = holdout_rows(ensemble, by_size, source.labels()[holdout], compared)
    return ExportScores(
        study=source.place.name,
        metric=_metric(trials),
        trials=tuple(_numbers(trials)),
        values=tuple(float(t.value) for t in trials),
        oof_ensemble=measure(labels, np.mean(per_trial, axis=0)),
        oof_trials=tuple(measure(labels, p) for p in per_trial),
        oof_size=len(labels),
        holdout=tuple(rows),
        holdout_size=len(holdout),
        tta=tta,
        tta_compared=compared,
    )


def _oof(folders: list[Path], folds: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels of the cross-validated samples and each trial's out-of-fold probabilities."""
    labels, per_trial = np.empty(0, np.int64), []
    for folder in folders:
        parts = [load_oof(folder, fold) for fold in range(folds)]
        order = np.argsort(np.concatenate([indices for indices, _, _ in parts]))
        labels = np.concatenate([y for _, y, _ in parts])[order]
        per_trial.append(np.concatenate([probs for _, _, probs in parts])[order])
    return labels, per_trial


def _publish(staging: Path, target: Path) -> None:
    """Swap the finished folder into place: readers never see a half-written export."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    for attempt in range(3):  # another worker may publish its export between our two renames
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        try:
            os.replace(staging, target)
            break
        except OSError:
            if attempt == 2:
                raise
    shutil.rmtree(old, ignore_errors=True)


def log_to_mlflow(result: ExportResult, study: optuna.Study, console: Console) -> ExportResult:
    """Log and register the export in MLflow; a failure costs one line, never the export."""
    from search.export.mlflow_model import failure_line, log_ensemble

    try:
        uri = log_ensemble(
            result.folder,
            study_name=result.study,
            run_id=study.user_attrs.get("hpo.mlflow_run_id"),
            metrics=flat_metrics(result.scores),
        )
    except Exception as err:  # the export on disk is complete; MLflow only holds a copy
        line = failure_line(err, folder=result.folder, study=result.study)
        console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)
        return result
    console.print(f"MLflow model: {uri} (registered as '{result.study}')")
    return replace(result, model_uri=uri)


# --- best_space.py ---


def _write_best_space(path: Path, source: StudySource, trial: FrozenTrial, tta: str) -> None:
    """Write the best configuration as a space file and check that it reads back the same."""
    config = trial.user_attrs["config"]
    path.write_text(best_space_text(source.place.name, source.settings, trial, tta=tta))
    space = load_space(path)
    if space.searched or space.config({}).to_dict() != TrainConfig(**config).to_dict():
        raise RuntimeError(f"{path} does not read back as trial {trial.number}'s configuration")

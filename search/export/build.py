"""Building an export: choose the members, copy their weights, score, write ONNX, publish.

See `search.export.study_export` for what an export holds and the entry points that use this
module (with `search.export.source` for what it reads); this one imports the whole trainer, so
the `hpo` command imports it (through those entry points) only when it exports.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console

from search import keys
from search.export.checkpoints import oof_path, top_trials, weights_path
from search.export.onnx_model import OnnxCheck, write_onnx
from search.export.report import ExportScores, best_space_text, flat_metrics, markdown, show
from search.export.scoring import (
    CrossValidated,
    Holdout,
    compared_tta,
    cross_validated,
    export_rows,
    scored_members,
)
from search.export.selection import Selection, select
from search.export.source import StudySource
from search.space.settings import ENSEMBLES
from search.space.spacefile import load_space
from search.study.folder import trial_dir
from search.study.plots import save_figures, study_figures
from search.study.splits import holdout_indices, stored_folds
from trainer import metrics
from trainer.augment import tta_views
from trainer.config import TrainConfig
from trainer.device import pick_device
from trainer.errors import ConfigError, ExportError
from trainer.inference.ensemble import Ensemble, Manifest, MemberSpec, file_sha256, load_member
from trainer.models import build_model, normalization, resolve_architecture

MEMBERS = "members"
FIGURES = "figures"  # the study's plots, linked from report.md


class NothingToExport(ExportError):
    """The study has no complete trial (or none with checkpoints) to build an ensemble from."""


@dataclass(frozen=True)
class ExportResult:
    """A written export, its scores, and its MLflow model URI when it was logged."""

    folder: Path
    study: str
    trials: tuple[int, ...]
    members: tuple[str, ...]
    scores: ExportScores
    manifest: Manifest
    onnx: OnnxCheck
    model_uri: str | None = None
    champion: bool = False
    previous: Path | None = None  # where the export it replaced is kept


def export(
    source: StudySource,
    *,
    top_k: int | None,
    tta: str | None,
    console: Console,
    mlflow: bool,
    ensemble: str | None = None,
) -> ExportResult:
    """Build the export, print its scores and, if asked, log it to MLflow."""
    result = build_export(source, top_k=top_k, tta=tta, ensemble=ensemble)
    show(result.scores, console, folder=result.folder, manifest=result.manifest)
    if result.previous is not None:
        console.print(f"The export it replaced is kept in {result.previous} (one generation).")
    return log_to_mlflow(result, source.study, console) if mlflow else result


# --- building ----------------------------------------------------------------------------------


def build_export(
    source: StudySource, *, top_k: int | None, tta: str | None, ensemble: str | None = None
) -> ExportResult:
    """Choose the members, score them, and write the export folder (swapped in whole).

    Args:
        source: The study.
        top_k: Candidate trials for ``ensemble="select"`` (default: setting ``top_k``).
        tta: TTA written into the export (default: setting ``tta``).
        ensemble: ``select`` (Caruana selection over the top trials) or ``best`` (the best
            trial's fold models); default: setting ``ensemble``.

    Raises:
        ConfigError: ``tta`` or ``ensemble`` is not a known mode.
        NothingToExport: No complete trial, or a chosen trial whose checkpoints are gone.
    """
    tta = tta or source.settings.tta
    tta_views(tta)  # a wrong mode fails before any work
    mode = _mode(ensemble or source.settings.ensemble)
    candidates = _chosen(source, 1 if mode == "best" else top_k or source.settings.top_k)
    folds, metric = source.settings.folds, _metric(candidates)
    numbers = [t.number for t in candidates]
    cv = cross_validated(source.place.folder, numbers, folds)
    chosen = select(cv.probs, cv.labels, metric) if mode == "select" else _alone(cv, metric)
    target = source.place.export_dir
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = _write_members(source, candidates, chosen.counts, staging, tta, mode)
        scores = _score(source, candidates, chosen, cv, mode, tta)
        check = _write_onnx(staging, source, metric)
        _write_best_space(staging / "best_space.py", source, candidates[0], tta)
        drawn = study_figures(source.study, source.study.get_trials(deepcopy=False), metric=metric)
        plots = [f"{FIGURES}/{name}" for name in save_figures(drawn, staging / FIGURES)]
        text = markdown(scores, manifest, onnx_check=check.sentence(), plots=plots)
        (staging / "report.md").write_text(text)
        previous = _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    names = tuple(m.name for m in manifest.members)
    return ExportResult(
        target, source.place.name, scores.trials, names, scores, manifest, check, previous=previous
    )


def _mode(ensemble: str) -> str:
    if ensemble not in ENSEMBLES:
        allowed = ", ".join(repr(mode) for mode in ENSEMBLES)
        raise ConfigError(f"ensemble={ensemble!r} is not one of {allowed}; use one of those.")
    return ensemble


def _alone(cv: CrossValidated, metric: str) -> Selection:
    """The best trial on its own (``ensemble="best"``)."""
    score = metrics.score(metric, cv.labels, cv.probs[0])
    return Selection(counts=(1,), score=score, scores=(score,))


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
    return all(oof_path(folder, k).is_file() for k in range(source.settings.folds))


def _write_members(
    source: StudySource,
    trials: list[FrozenTrial],
    counts: tuple[int, ...],
    staging: Path,
    tta: str,
    mode: str,
) -> Manifest:
    """Copy the chosen trials' fold weights; a trial's share of the vote is split over its folds."""
    (staging / MEMBERS).mkdir(parents=True)
    classes = tuple(source.study.user_attrs[keys.CLASSES_ATTR])
    total = sum(counts)
    specs = []
    for trial, count in zip(trials, counts, strict=True):
        if count:
            share = count / total / source.settings.folds
            specs += _trial_members(source, trial, len(classes), share, staging)
    info = {
        "study": source.place.name,
        "metric": _metric(trials),
        "trials": [t.number for t, c in zip(trials, counts, strict=True) if c],
        "ensemble": {
            "mode": mode,
            "candidates": [t.number for t in trials],
            "counts": list(counts),
        },
    }
    manifest = Manifest(classes, tuple(specs), tta=tta, info=info)
    manifest.write(staging)
    return manifest


def _trial_members(
    source: StudySource, trial: FrozenTrial, classes: int, weight: float, staging: Path | None
) -> list[MemberSpec]:
    """The fold models of ``trial``: copied into ``staging``, or read where they are (None)."""
    config = TrainConfig(**trial.user_attrs[keys.CONFIG_ATTR])
    # Stored so that the export predicts without the hub or folder an hf-hub: or local-dir:
    # backbone came from (timm reads its config.json even without weights).
    architecture = resolve_architecture(config.backbone)
    # The normalisation the trainer used; building without weights downloads nothing.
    model = build_model(config.replace(pretrained=False), classes, architecture=architecture)
    mean, std = normalization(model)
    specs = []
    for fold in range(source.settings.folds):
        name = f"trial{trial.number}-fold{fold}"
        checkpoint = weights_path(trial_dir(source.place.folder, trial.number), fold)
        if staging is None:
            where, digest = str(checkpoint), ""
        else:
            copy = staging / MEMBERS / f"{name}.safetensors"
            shutil.copyfile(checkpoint, copy)
            where, digest = f"{MEMBERS}/{copy.name}", file_sha256(copy)
        specs.append(
            MemberSpec(
                name,
                where,
                config.to_dict(),
                mean,
                std,
                digest,
                trial=trial.number,
                fold=fold,
                architecture=architecture,
                weight=weight,
            )
        )
    return specs


def _metric(trials: list[FrozenTrial]) -> str:
    return str(trials[0].user_attrs[keys.CONFIG_ATTR]["metric"])


def _score(
    source: StudySource,
    candidates: list[FrozenTrial],
    chosen: Selection,
    cv: CrossValidated,
    mode: str,
    tta: str,
) -> ExportScores:
    """Score the export, each trial it uses and the best trial, and their best fold model."""
    shown = [t for t, c in zip(candidates, chosen.counts, strict=True) if c]
    if candidates[0] not in shown:
        shown.append(candidates[0])
    classes = len(source.study.user_attrs[keys.CLASSES_ATTR])
    specs = [spec for t in shown for spec in _trial_members(source, t, classes, 1.0, None)]
    folder = Path(source.place.folder)
    members = [load_member(folder, spec, classes, pick_device(None)) for spec in specs]
    scoring = Ensemble(members, classes=source.study.user_attrs[keys.CLASSES_ATTR])
    compared = compared_tta(tta, [t.user_attrs[keys.CONFIG_ATTR] for t in shown])
    holdout = _holdout(source, scoring.sizes)
    pairs = [(int(spec.trial), int(spec.fold)) for spec in specs]  # type: ignore[arg-type]
    scored = scored_members(scoring, pairs, holdout, compared)
    rows = export_rows(
        candidates=candidates,
        selection=chosen,
        mode=mode,
        cv=cv,
        scored=scored,
        holdout=holdout,
        metric=_metric(candidates),
    )
    return ExportScores(
        study=source.place.name,
        metric=_metric(candidates),
        mode=mode,
        candidates=tuple(t.number for t in candidates),
        values=tuple(float(t.value) for t in candidates),
        counts=chosen.counts,
        rows=rows,
        cv_size=len(cv.labels),
        holdout_size=0 if holdout is None else len(holdout.labels),
        tta=tta,
        tta_compared=compared,
    )


def _holdout(source: StudySource, sizes: tuple[int, ...]) -> Holdout | None:
    indices = holdout_indices(stored_folds(source.study))
    if not len(indices):
        return None
    images = {size: source.images(size)[indices] for size in sizes}
    return Holdout(images, source.labels()[indices])


def _write_onnx(staging: Path, source: StudySource, metric: str) -> OnnxCheck:
    """``ensemble.onnx`` of the export being written, checked against its PyTorch ensemble.

    The check runs on the holdout's images at every member size, as training decoded them
    (random images when the study has no holdout).
    """
    ensemble = Ensemble.load(staging, device="cpu")
    holdout = _holdout(source, ensemble.sizes)
    metadata = {"study": source.place.name, "metric": metric}
    images = None if holdout is None else holdout.images
    return write_onnx(staging, ensemble, metadata=metadata, images=images)


def previous_export(target: Path) -> Path:
    """Where the export that a new one replaced is kept (``export.prev``, one generation)."""
    return target.with_name(f"{target.name}.prev")


def _publish(staging: Path, target: Path) -> Path | None:
    """Swap the finished folder into place: readers never see a half-written export.

    Returns:
        Where the export it replaced is kept (`previous_export`; with tracking off it is the
        only copy), or None when there was none.
    """
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
    if not old.exists():
        return None
    shutil.rmtree(previous_export(target), ignore_errors=True)
    os.replace(old, previous_export(target))
    return previous_export(target)


def log_to_mlflow(result: ExportResult, study: optuna.Study, console: Console) -> ExportResult:
    """Log and register the export in MLflow; a failure costs one line, never the export;
    the version becomes ``champion`` when its out-of-fold score wins (the holdout is a report)."""
    from search.export.mlflow_model import champion_line, failure_line, log_ensemble, scored

    headline = scored(result.scores)
    try:
        logged = log_ensemble(
            result.folder,
            study_name=result.study,
            run_id=study.user_attrs.get(keys.STUDY_RUN_ATTR),
            metrics=flat_metrics(result.scores),
            headline=headline,
        )
    except Exception as err:  # the export on disk is complete; MLflow only holds a copy
        line = failure_line(err, folder=result.folder, study=result.study)
        console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)
        return result
    console.print(champion_line(logged, headline, study=result.study, folder=result.folder))
    return replace(result, model_uri=logged.uri, champion=logged.champion)


# --- best_space.py ---


def _write_best_space(path: Path, source: StudySource, trial: FrozenTrial, tta: str) -> None:
    """Write the best configuration as a space file and check that it reads back the same."""
    config = trial.user_attrs[keys.CONFIG_ATTR]
    path.write_text(best_space_text(source.place.name, source.settings, trial, tta=tta))
    space = load_space(path)
    if space.searched or space.config({}).to_dict() != TrainConfig(**config).to_dict():
        raise RuntimeError(f"{path} does not read back as trial {trial.number}'s configuration")

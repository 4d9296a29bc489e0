"""Building an export folder: from the candidate trials (`search.export.candidates`) the
members are chosen and copied (`search.export.members`), scored, written as ONNX, described in
best_space.py and report.md, and the folder is swapped in whole.

See `search.export.entry_points` for what an export holds and the entry points that use this
module (with `search.export.study_source` for what it reads, and `search.export.publish` for
MLflow); this one imports the whole trainer, so the `hpo` command imports it (through those
entry points) only when it exports.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial

from search import keys
from search.export.candidates import best_alone, candidate_trials, ensemble_mode, metric_of
from search.export.members import trial_members, write_members
from search.export.onnx_model import OnnxCheck, write_onnx
from search.export.report import ExportScores, best_space_text, markdown
from search.export.scoring import (
    CrossValidated,
    Holdout,
    compared_tta,
    cross_validated,
    export_rows,
    scored_members,
)
from search.export.selection import Selection, select
from search.export.study_source import StudySource
from search.space.spacefile import load_space
from search.study.splits import holdout_indices, stored_folds
from trainer.augment import tta_views
from trainer.config import TrainConfig
from trainer.device import pick_device
from trainer.inference.ensemble import Ensemble, Manifest, load_member

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

# Draws the study's plots by file name (None: not drawable yet), as
# `search.tracking.plots.study_figures` does. The export sits below tracking, so the callers above
# both (`hpo run`, `hpo export`) hand it in; without one the export has no plots.
DrawPlots = Callable[..., Mapping[str, "Figure | None"]]

FIGURES = "figures"  # the study's plots, linked from report.md


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


# --- building ----------------------------------------------------------------------------------


def build_export(
    source: StudySource,
    *,
    top_k: int | None,
    tta: str | None,
    ensemble: str | None = None,
    plots: DrawPlots | None = None,
) -> ExportResult:
    """Choose the members, score them, and write the export folder (swapped in whole).

    Args:
        source: The study.
        top_k: Candidate trials for ``ensemble="select"`` (default: setting ``top_k``).
        tta: TTA written into the export (default: setting ``tta``).
        ensemble: ``select`` (Caruana selection over the top trials) or ``best`` (the best
            trial's fold models); default: setting ``ensemble``.
        plots: Draws the study's plots into ``figures/``, linked from report.md
            (``plots(study, trials, metric=...)``); None: no plots.

    Raises:
        ConfigError: ``tta`` or ``ensemble`` is not a known mode.
        NothingToExport: No complete trial, or a chosen trial whose checkpoints are gone.
    """
    tta = tta or source.settings.tta
    tta_views(tta)  # a wrong mode fails before any work
    mode = ensemble_mode(ensemble or source.settings.ensemble)
    candidates = candidate_trials(source, 1 if mode == "best" else top_k or source.settings.top_k)
    folds, metric = source.settings.folds, metric_of(candidates)
    numbers = [t.number for t in candidates]
    cv = cross_validated(source.place.folder, numbers, folds)
    chosen = select(cv.probs, cv.labels, metric) if mode == "select" else best_alone(cv, metric)
    target = source.place.export_dir
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = write_members(source, candidates, chosen.counts, staging, tta, mode)
        scores = _score(source, candidates, chosen, cv, mode, tta)
        check = _write_onnx(staging, source, metric)
        _write_best_space(staging / "best_space.py", source, candidates[0], tta)
        linked = _plots(source.study, metric, staging / FIGURES, plots)
        text = markdown(scores, manifest, onnx_check=check.sentence(), plots=linked)
        (staging / "report.md").write_text(text)
        previous = _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    names = tuple(m.name for m in manifest.members)
    return ExportResult(
        target, source.place.name, scores.trials, names, scores, manifest, check, previous=previous
    )


def _plots(study: optuna.Study, metric: str, folder: Path, draw: DrawPlots | None) -> list[str]:
    """Draw the study's plots into ``folder``; their paths as report.md links them."""
    if draw is None:
        return []
    drawn = draw(study, study.get_trials(deepcopy=False), metric=metric)
    return [f"{folder.name}/{name}" for name in save_figures(drawn, folder)]


def save_figures(figures: Mapping[str, Figure | None], folder: Path) -> list[str]:
    """Write each drawn figure as ``folder/<name>``; the names written, in order."""
    written = []
    for name, figure in figures.items():
        if figure is not None:
            folder.mkdir(parents=True, exist_ok=True)
            figure.savefig(folder / name, dpi=100)
            written.append(name)
    return written


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
    specs = [spec for t in shown for spec in trial_members(source, t, classes, 1.0, None)]
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
        metric=metric_of(candidates),
    )
    return ExportScores(
        study=source.place.name,
        metric=metric_of(candidates),
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


# --- best_space.py ---


def _write_best_space(path: Path, source: StudySource, trial: FrozenTrial, tta: str) -> None:
    """Write the best configuration as a space file and check that it reads back the same."""
    config = trial.user_attrs[keys.CONFIG_ATTR]
    path.write_text(best_space_text(source.place.name, source.settings, trial, tta=tta))
    space = load_space(path)
    if space.searched or space.config({}).to_dict() != TrainConfig(**config).to_dict():
        raise RuntimeError(f"{path} does not read back as trial {trial.number}'s configuration")

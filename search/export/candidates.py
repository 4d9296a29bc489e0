"""Which trials an export may be built from: the best complete trials that kept their fold
checkpoints, in the ensemble mode asked for."""

from __future__ import annotations

from optuna.trial import FrozenTrial

from search import keys
from search.export.checkpoints import oof_path, top_trials
from search.export.scoring import CrossValidated
from search.export.selection import Selection
from search.export.study_source import StudySource
from search.space.settings import ENSEMBLES
from search.study.folder import trial_dir
from trainer import metrics
from trainer.errors import ConfigError, ExportError


class NothingToExport(ExportError):
    """The study has no complete trial (or none with checkpoints) to build an ensemble from."""


def ensemble_mode(ensemble: str) -> str:
    """``ensemble`` when it is a known mode (``select`` or ``best``).

    Raises:
        ConfigError: Otherwise.
    """
    if ensemble not in ENSEMBLES:
        allowed = ", ".join(repr(mode) for mode in ENSEMBLES)
        raise ConfigError(f"ensemble={ensemble!r} is not one of {allowed}; use one of those.")
    return ensemble


def best_alone(cv: CrossValidated, metric: str) -> Selection:
    """The best trial on its own (``ensemble="best"``)."""
    score = metrics.score(metric, cv.labels, cv.probs[0])
    return Selection(counts=(1,), score=score, scores=(score,))


def candidate_trials(source: StudySource, top_k: int) -> list[FrozenTrial]:
    """The ``top_k`` best complete trials, every one with its fold checkpoints.

    Raises:
        NothingToExport: No complete trial, or one of them has lost its checkpoints.
    """
    name = source.place.name
    trials = top_trials(source.study, top_k)
    if not trials:
        raise NothingToExport(
            f"Study '{name}' has no complete trial yet (pruned and failed trials have no "
            "ensemble); run `hpo run` until one completes, then export."
        )
    kept = next((i for i, t in enumerate(trials) if not has_checkpoints(source, t)), None)
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


def has_checkpoints(source: StudySource, trial: FrozenTrial) -> bool:
    """Whether every fold of ``trial`` still has its out-of-fold predictions and weights."""
    folder = trial_dir(source.place.folder, trial.number)
    return all(oof_path(folder, k).is_file() for k in range(source.settings.folds))


def metric_of(trials: list[FrozenTrial]) -> str:
    """The metric the trials were scored with."""
    return str(trials[0].user_attrs[keys.CONFIG_ATTR]["metric"])

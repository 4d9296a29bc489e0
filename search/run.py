"""`hpo run`: from a space file to a finished study (and, later, its export)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from rich.console import Console

from search.hooks import HookList, Hooks
from search.objective import Objective, StudyData
from search.progress import Progress
from search.report import trials_table
from search.runner import RunLimits, optimize
from search.spacefile import Space, load_space
from search.splits import fold_splits
from search.study import StudyError, StudyPlace, open_study, stored_folds
from trainer.errors import ConfigError
from trainer.models import close_backbones
from trainer.sources import ImageTable, load_table


@dataclass(frozen=True)
class RunRequest:
    """What the user asked `hpo run` for (command-line flags beat the space file)."""

    space: str
    overrides: Sequence[str] = ()
    trials: int | None = None
    timeout: float | None = None
    study: str | None = None
    storage: str | None = None
    worker: int = 0
    heartbeat: int = 20
    progress: bool = True


def prepare(request: RunRequest) -> tuple[Space, StudyPlace, ImageTable, optuna.Study]:
    """Load and check everything a run needs, creating or resuming the study.

    Raises:
        UserError: For a bad space file, data, storage or a study that does not match.
    """
    space = load_space(request.space, request.overrides)
    check_backbones(space)
    place = StudyPlace.of(request.study or space.name, request.storage)
    table = load_table(space.settings["data"])
    seed = space.config({}).seed
    sampler_seed = seed if request.worker == 0 else seed * 7919 + request.worker
    study = open_study(place, space, table, sampler_seed=sampler_seed, heartbeat=request.heartbeat)
    return space, place, table, study


def check_backbones(space: Space) -> None:
    """Every backbone the space can pick exists in timm (fail before any training)."""
    import timm

    searched = space.searched.get("backbone")
    names = searched.values_to_check() if searched else (space.config({}).backbone,)
    for name in names:
        if not timm.is_model(name):
            close = ", ".join(close_backbones(name)) or "none close"
            raise ConfigError(
                f"Unknown backbone '{name}' in {space.path} (close names: {close}); use a name "
                "from timm.list_models()."
            )


def run(request: RunRequest, *, console: Console | None = None, hooks: Sequence[Hooks] = ()) -> str:
    """Run the study to its target of finished trials; returns "done" or "timeout"."""
    console = console or Console(stderr=True)
    space, place, table, study = prepare(request)
    fold_of = stored_folds(study)
    if len(fold_of) != len(table):
        raise StudyError(f"Study '{place.name}' stores splits for another dataset size.")
    folds = space.settings["folds"]
    data = StudyData(table, fold_splits(np.asarray(fold_of), folds), progress=request.progress)
    target = request.trials or space.settings["trials"]
    limits = RunLimits(
        target=target,
        timeout=request.timeout or space.settings["timeout"],
        max_failures=space.settings["max_failures"],
        poll_seconds=min(5.0, request.heartbeat / 2),
    )
    with Progress(study, target=target, folds=folds, console=console) as progress:
        all_hooks = HookList([progress, *hooks])
        outcome = optimize(study, Objective(space, data, all_hooks), all_hooks, limits)
    console.print(trials_table(study, title=f"Top trials of study '{place.name}'"))
    console.print(f"Study storage: {place.storage_url}\nStudy folder:  {place.folder}")
    return outcome

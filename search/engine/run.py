"""`hpo run`: from a space file to a finished study and its export."""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Sequence

import numpy as np
from rich.console import Console

from search import keys
from search.console import make_console
from search.context import HookFactory, RunRequest, StudyRun
from search.engine.objective import Objective
from search.engine.progress import Progress
from search.engine.runner import RunLimits, optimize
from search.hooks import HookList, Hooks, Outcome
from search.keys import STOPPED
from search.space.preflight import check_backbones, check_images, check_weights
from search.space.spacefile import load_space
from search.study.data import StudyData
from search.study.folder import check_folder, claim_folder
from search.study.identity import as_stored, check_study, open_study
from search.study.splits import (
    fold_splits,
    holdout_note,
    splits_id,
    stored_folds,
)
from search.study.storage import (
    StudyError,
    StudyPlace,
    open_storage,
    redact_url,
)
from search.study.tables import trials_table
from search.study.warmstart import seed_trials
from trainer.sources import load_table


def prepare(request: RunRequest, console: Console | None = None) -> StudyRun:
    """Load and check everything a run needs, creating or resuming the study.

    Raises:
        UserError: For a bad space file, data, storage or a study that does not match.
    """
    space = load_space(request.space, request.overrides)
    check_backbones(space)
    check_weights(space)
    place = StudyPlace.of(request.study or space.name, request.storage)
    table = load_table(space.settings.data)
    heartbeat = request.heartbeat or space.settings.heartbeat
    patience = space.settings.storage_patience
    storage = open_storage(place.storage_url, heartbeat=heartbeat, patience=patience)
    space = as_stored(storage, place, space, table, console)  # what the study stores
    check_study(storage, place, space, table)  # before decoding: a mismatch fails in seconds
    check_folder(storage, place)  # before the study exists: another one's folder is refused
    check_images(space, table, progress=request.progress)
    process_seed = _process_seed(request, space.settings.seed)
    study = open_study(storage, place, space, table, process_seed=process_seed)
    claim_folder(study, place)
    # `hpo export` reads the latest run-control settings (top_k, tta, tracking) from here.
    study.set_user_attr(keys.RUN_CONTROL_ATTR, space.settings.run_control())
    console = console or make_console()
    if request.worker == 0:  # workers find them in the storage
        seed_trials(
            study, space, place, console, warm_start=request.warm_start, storage=request.storage
        )
    fold_of = stored_folds(study)
    if len(fold_of) != len(table):
        raise StudyError(f"Study '{place.name}' stores splits for another dataset size.")
    splits = fold_splits(np.asarray(fold_of), space.settings.folds)
    data = StudyData(
        table, splits, splits_id(fold_of), progress=request.progress, folder=place.folder
    )
    target = request.trials or space.settings.trials
    return StudyRun(request, space, place, table, study, data, target, console)


def _process_seed(request: RunRequest, seed: int) -> int:
    """The model-based sampler's seed: the study's for a lone process, else one per process.

    TPE seeded alike in several processes would propose alike; a worker, or a process on
    shared storage, mixes in who it is (start-up trials are seeded per trial number anyway).
    """
    if request.worker == 0 and request.storage is None:
        return seed
    who = f"{seed}:{request.worker}:{socket.gethostname()}:{os.getpid()}"
    return zlib.crc32(who.encode())


def default_hooks() -> list[HookFactory]:
    """The run_hooks every run has: MLflow tracking (unless off) and fold checkpoints."""
    from search.export.checkpoints import checkpoint_hook
    from search.tracking.tracker import tracking_hook

    # Tracking first: an epoch is logged even if a later hook raises on it.
    return [tracking_hook, checkpoint_hook]


def run(
    request: RunRequest,
    *,
    console: Console | None = None,
    hooks: Sequence[HookFactory] | None = None,
) -> Outcome:
    """Run the study to its target of finished trials; how it ended."""
    run = prepare(request, console)
    settings = run.space.settings
    limits = RunLimits(
        target=run.target,
        timeout=request.timeout or settings.timeout,
        max_failures=settings.max_failures,
        poll_seconds=min(5.0, settings.heartbeat / 2),
        patience=settings.patience_trials,
    )
    progress = Progress(run.study, target=run.target, folds=settings.folds, console=run.console)
    run_hooks = hooks_for(run, default_hooks() if hooks is None else hooks, progress)
    objective = Objective(run.space, run.data, run_hooks)
    outcome = Outcome.FAILED
    try:
        with progress:
            outcome = optimize(run.study, objective, run_hooks, limits)
    except KeyboardInterrupt:
        outcome = Outcome.INTERRUPTED
        raise
    finally:
        run_hooks.study_ended(run.study, outcome)
    if outcome == Outcome.PATIENCE:
        run.console.print(f"Stopped early: {run.study.user_attrs[STOPPED]['reason']}.")
    finish(run, outcome)
    return outcome


def hooks_for(run: StudyRun, factories: Sequence[HookFactory], *first: Hooks) -> HookList:
    """The hooks of a run: ``first`` (e.g. the progress view), then one per factory."""
    return HookList([*first, *(make(run) for make in factories)])


def finish(run: StudyRun, outcome: Outcome) -> None:
    """Print the top trials and paths, then export (unless this process is a worker)."""
    _report(run)
    if run.request.export and run.request.worker == 0 and outcome != Outcome.FAILED:
        _export(run)


def _export(run: StudyRun) -> None:
    from search.export.candidates import NothingToExport
    from search.export.entry_points import export_study
    from search.tracking.plots import study_figures

    try:
        export_study(run, plots=study_figures)
    except NothingToExport as err:
        run.console.print(f"No export: {err}")


def _report(run: StudyRun) -> None:
    console = run.console
    console.print(trials_table(run.study, title=f"Top trials of study '{run.place.name}'"))
    console.print(f"Study storage: {redact_url(run.place.storage_url)}")  # no password
    console.print(f"Study folder:  {run.place.folder}")
    note = holdout_note(run.space, len(run.table))
    if note:  # beside the scores it is about
        console.print(f"[yellow]{note}[/yellow]")

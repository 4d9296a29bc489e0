"""`hpo run`: from a space file to a finished study and its export."""

from __future__ import annotations

import os
import shutil
import socket
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from rich.console import Console

from search import keys
from search.console import make_console
from search.context import HookFactory, RunRequest, StudyRun
from search.engine.objective import Objective
from search.engine.progress import Progress
from search.engine.runner import RunLimits, optimize
from search.export.checkpoints import trial_dir
from search.hooks import HookList, Hooks, Outcome
from search.keys import BASELINE, STOPPED
from search.space.spacefile import Space, load_space
from search.study.data import StudyData
from search.study.folder import check_folder, check_owner, claim_folder
from search.study.identity import check_study, open_study
from search.study.splits import (
    fold_splits,
    holdout_note,
    resolve_holdout,
    splits_id,
    stored_folds,
)
from search.study.storage import (
    StudyError,
    StudyPlace,
    load_hpo_study,
    open_storage,
    redact_url,
)
from search.study.tables import trials_table
from search.study.warmstart import warm_start
from trainer.cache import cached_images
from trainer.config import weights_for
from trainer.models import check_backbone, check_pretrained, check_weights_file
from trainer.sources import ImageTable, load_table

# Trials that make a study worth keeping as it is (see `forget_unfinished`).
_KEPT = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


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
    space = _as_stored(storage, place, space, table, console)  # what the study stores
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
        seed_trials(request, study, space, place, console)
    fold_of = stored_folds(study)
    if len(fold_of) != len(table):
        raise StudyError(f"Study '{place.name}' stores splits for another dataset size.")
    splits = fold_splits(np.asarray(fold_of), space.settings.folds)
    data = StudyData(
        table, splits, splits_id(fold_of), progress=request.progress, folder=place.folder
    )
    target = request.trials or space.settings.trials
    return StudyRun(request, space, place, table, study, data, target, console)


def _as_stored(
    storage: BaseStorage,
    place: StudyPlace,
    space: Space,
    table: ImageTable,
    console: Console | None,
) -> Space:
    """``space`` with the holdout the study stores, after `forget_unfinished`."""
    resolved = resolve_holdout(storage, place, space, table)
    if not forget_unfinished(storage, place, resolved, table, console):
        return resolved
    return resolve_holdout(storage, place, space, table)  # a new study's default


def forget_unfinished(
    storage: BaseStorage,
    place: StudyPlace,
    space: Space,
    table: ImageTable,
    console: Console | None,
) -> bool:
    """Delete the stored study if it has another space or data and no trial finished or running.

    A study's identity (space, data, folds) is stored when it is created, before its first
    trial. A start that failed before any trial finished (a wrong setting found in trial 0)
    would otherwise lock it, and the corrected command would be refused as "a different search
    space"; the failed trials of that start are about a setup the user has since changed.

    Returns:
        Whether a study was deleted.
    """
    try:
        study_id = storage.get_study_id_from_name(place.name)
    except KeyError:
        return False
    stored = storage.get_study_user_attrs(study_id)
    if keys.FINGERPRINT_ATTR not in stored or (
        stored[keys.FINGERPRINT_ATTR] == space.fingerprint()
        and stored.get(keys.CONTENT_ID_ATTR) == table.content_id
    ):
        return False
    if storage.get_all_trials(study_id, deepcopy=False, states=_KEPT):
        return False
    optuna.delete_study(study_name=place.name, storage=storage)
    (console or make_console()).print(
        f"Study '{place.name}' had no finished trial: it starts again with this space and data."
    )
    return True


def seed_trials(
    request: RunRequest, study: optuna.Study, space: Space, place: StudyPlace, console: Console
) -> None:
    """What a study starts from: another study's finished trials, then the space's baselines."""
    if request.warm_start:
        copy_trials(request.warm_start, request.storage, study, space, place, console)
    queued = enqueue_baselines(study, space.settings.baselines)
    if queued:
        console.print(f"Queued {queued} baseline configurations of the space file to run first.")


def enqueue_baselines(study: optuna.Study, baselines: Sequence[dict[str, Any]]) -> int:
    """Queue ``baselines`` to run next; one the study already has (any state) is skipped."""
    waiting = (TrialState.WAITING,)
    before = len(study.get_trials(deepcopy=False, states=waiting))
    for index, params in enumerate(baselines):
        study.enqueue_trial(dict(params), user_attrs={BASELINE: index}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False, states=waiting)) - before


def copy_trials(
    name: str,
    storage: str | None,
    study: optuna.Study,
    space: Space,
    place: StudyPlace,
    console: Console,
) -> None:
    """``--warm-start NAME``: copy that study's finished trials (and checkpoints) into this one.

    Raises:
        StudyError: No such study, this study itself, or one whose scores would not compare.
    """
    source_place = StudyPlace.of(name, storage)  # the same storage as this study's
    if source_place.name == place.name:
        raise StudyError(f"--warm-start {name} names the study being run; name another study.")
    source = load_hpo_study(source_place)
    check_owner(source, source_place)  # its folder's checkpoints must be its own
    done = warm_start(study, source, name, space)
    if done.already:
        console.print(f"Warm start: the trials of study '{name}' were copied in an earlier run.")
        return
    for old, new in done.copied.items():
        folder = trial_dir(source_place.folder, old)
        if folder.is_dir():  # the other study's best trials keep checkpoints: export can use them
            shutil.copytree(folder, trial_dir(place.folder, new), dirs_exist_ok=True)
    console.print(
        f"Warm start: copied {len(done.copied)} finished trials of study '{name}' "
        f"({done.skipped} lie outside this space); they count toward --trials."
    )


def _process_seed(request: RunRequest, seed: int) -> int:
    """The model-based sampler's seed: the study's for a lone process, else one per process.

    TPE seeded alike in several processes would propose alike; a worker, or a process on
    shared storage, mixes in who it is (start-up trials are seeded per trial number anyway).
    """
    if request.worker == 0 and request.storage is None:
        return seed
    who = f"{seed}:{request.worker}:{socket.gethostname()}:{os.getpid()}"
    return zlib.crc32(who.encode())


def _candidates(space: Space, name: str) -> tuple[Any, ...]:
    """The values of config field ``name`` that the space can pick (both bounds of a range)."""
    searched = space.searched.get(name)
    return searched.values_to_check() if searched else (getattr(space.config({}), name),)


def check_backbones(space: Space) -> None:
    """Every backbone the space can pick exists in timm (fail before any training)."""
    for name in _candidates(space, "backbone"):
        check_backbone(name, str(space.path))


def check_weights(space: Space) -> None:
    """The pretrained weights the space can ask for can be had (fail before any training).

    Each backbone is built once from each weights file it can get, as its trials would build
    it: a missing, corrupt or foreign file is refused before the study exists.
    """
    searched = space.searched.get("pretrained")
    options = searched.values_to_check() if searched else (space.literals.get("pretrained", False),)
    pairs = {(b, weights_for(p, b)) for b in space.backbones() for p in options}
    for backbone, weights in sorted(pairs, key=str):
        check_pretrained(backbone, weights)
        if isinstance(weights, str):
            check_weights_file(backbone, weights)


def check_images(space: Space, table: ImageTable, *, progress: bool) -> None:
    """Every image decodes: found before the study is created, not in its first trial.

    This builds the image cache at the smallest size the space can pick (trials reuse it) and
    reports every unreadable file at once.

    Raises:
        DataError: Some images cannot be read.
    """
    cached_images(table, min(_candidates(space, "image_size")), progress=progress)


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
    from search.export.build import NothingToExport
    from search.export.study_export import export_study

    try:
        export_study(run)
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

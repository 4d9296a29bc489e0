"""Fold checkpoints: each fold's best weights and out-of-fold predictions, kept only while useful.

Layout, per trial: ``studies/<name>/trials/<number>/``

    config.json            the trial's resolved TrainConfig
    fold<k>.safetensors    the best epoch's weights of fold k
    fold<k>.oof.npz        ``indices``, ``labels`` and ``probs`` of the fold's validation samples

Only the running trials and the ``top_k`` best complete trials keep their folder: a pruned or
failed trial's folder goes when it ends, a complete one when ``top_k`` better trials exist, so
disk use stays bounded however long the study runs. Every file appears through an atomic rename
of a hidden temporary file, so a process killed mid-write never leaves a half file under a
name that readers look for.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
import torch
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from safetensors.torch import save

from search import keys
from search.hooks import Hooks, Outcome
from search.study.folder import trial_dir, trials_dir

if TYPE_CHECKING:
    from search.context import StudyRun
    from trainer.config import TrainConfig
    from trainer.types import FoldResult

# Trials whose folder must stay whatever their value: they may still finish well.
_ALIVE = (TrialState.RUNNING, TrialState.WAITING)


def weights_path(folder: Path, fold: int) -> Path:
    """The weights file of fold ``fold`` in a trial folder."""
    return Path(folder) / f"fold{fold}.safetensors"


def oof_path(folder: Path, fold: int) -> Path:
    """The out-of-fold predictions file of fold ``fold`` in a trial folder."""
    return Path(folder) / f"fold{fold}.oof.npz"


def load_oof(folder: Path, fold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indices, labels, probs)`` of a fold's validation samples, saved by `CheckpointHook`."""
    with np.load(oof_path(folder, fold), allow_pickle=False) as saved:
        return saved["indices"], saved["labels"], saved["probs"]


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best complete trials, best first; ties go to the earlier trial."""
    return best_of(study.get_trials(deepcopy=False), study.direction, k)


def best_of(trials: list[FrozenTrial], direction: StudyDirection, k: int) -> list[FrozenTrial]:
    """The ``k`` best complete trials of ``trials``, best first; ties go to the earlier trial."""
    sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return sorted(complete, key=lambda t: (sign * t.value, t.number))[:k]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent, old, or complete."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def weights_bytes(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """A state dict as safetensors bytes (contiguous CPU copies; no pickled code)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return save(tensors, metadata=dict(metadata))


def oof_bytes(indices: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> bytes:
    """Out-of-fold sample indices, true labels and probabilities as ``.npz`` bytes."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        indices=np.asarray(indices, np.int64),
        labels=np.asarray(labels, np.int64),
        probs=np.asarray(probs, np.float32),
    )
    return buffer.getvalue()


class CheckpointHook(Hooks):
    """Saves every fold's best weights and out-of-fold probabilities; deletes what cannot matter.

    Args:
        study_folder: ``studies/<name>``; trial folders go to its ``trials/``.
        labels: The label of every sample of the study's data (saved with the predictions, so
            out-of-fold scores need no access to the data).
        top_k: How many of the best complete trials keep their checkpoints.
        console: Where to warn when a checkpoint cannot be written (training goes on).
    """

    def __init__(
        self,
        study_folder: Path,
        *,
        labels: np.ndarray,
        top_k: int,
        console: Console | None = None,
    ) -> None:
        self.folder, self.labels = Path(study_folder), np.asarray(labels)
        self.top_k, self.console = top_k, console

    def trial_started(self, trial: optuna.Trial, config: TrainConfig) -> None:
        """Start the trial's folder afresh (a leftover of a deleted study must not mix in)."""
        folder = trial_dir(self.folder, trial.number)
        shutil.rmtree(folder, ignore_errors=True)
        self._guarded(trial, lambda: self._write_config(folder, config))

    def fold_ended(self, trial: optuna.Trial, result: FoldResult) -> None:
        """Save the fold's best weights and its out-of-fold probabilities."""
        folder = trial_dir(self.folder, trial.number)
        self._guarded(trial, lambda: self._write_fold(folder, trial.number, result))

    def trial_ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Delete the checkpoints of every finished trial outside the top ``top_k``."""
        self.sweep(study)

    def study_ended(self, study: optuna.Study, outcome: Outcome) -> None:
        """Sweep once more (an interrupted trial is failed only after its last hook call)."""
        self.sweep(study)

    def sweep(self, study: optuna.Study) -> list[int]:
        """Remove the folders of trials that can no longer be exported; returns their numbers."""
        # One read of the storage: with two, a trial another worker completes between them
        # would be judged finished yet not among the best, and lose its checkpoints.
        snapshot = study.get_trials(deepcopy=False)
        keep = {t.number for t in best_of(snapshot, study.direction, self.top_k)}
        states = {t.number: t.state for t in snapshot}
        removed = []
        for number in _folder_numbers(trials_dir(self.folder)):
            # A folder of an unknown trial may belong to a worker that has not told the storage
            # yet; only trials known to be finished are removed.
            state = states.get(number)
            if state is None or state in _ALIVE or number in keep:
                continue
            shutil.rmtree(trial_dir(self.folder, number), ignore_errors=True)
            removed.append(number)
        return removed

    def _write_config(self, folder: Path, config: TrainConfig) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(config.to_dict(), indent=2) + "\n"
        write_atomic(folder / "config.json", text.encode())

    def _write_fold(self, folder: Path, number: int, result: FoldResult) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {
            "trial": str(number),
            "fold": str(result.fold),
            "score": repr(float(result.score)),
            "best_epoch": str(result.best_epoch),
        }
        write_atomic(weights_path(folder, result.fold), weights_bytes(result.state_dict, metadata))
        # Written second: a fold with predictions always has its weights.
        labels = self.labels[result.val_indices]
        oof = oof_bytes(result.val_indices, labels, result.val_probs)
        write_atomic(oof_path(folder, result.fold), oof)

    def _guarded(self, trial: optuna.Trial, write: Callable[[], None]) -> None:
        try:
            write()
        except OSError as err:  # a full disk must not end the trial; the export will say so
            message = f"checkpoint not saved: {err.strerror or err}"
            trial.set_user_attr(keys.CHECKPOINT_ERROR_ATTR, message)
            if self.console is not None:
                self.console.print(f"[yellow]trial {trial.number}: {message}[/yellow]")


def _folder_numbers(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def checkpoint_hook(run: StudyRun) -> Hooks:
    """The `HookFactory` of fold checkpoints for `search.engine.run.default_hooks`."""
    return CheckpointHook(
        run.place.folder,
        labels=run.table.labels,
        top_k=run.space.settings.top_k,
        console=run.console,
    )

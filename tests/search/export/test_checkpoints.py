"""Fold checkpoints: what is written, what is deleted when, and what a kill mid-write leaves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

from search.export import checkpoints
from search.export.checkpoints import CheckpointHook, load_oof, oof_path, weights_path
from search.study.folder import trial_dir
from trainer.config import TrainConfig
from trainer.types import FoldResult

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1], dtype=np.int64)
FOLDS = 2


def _result(fold: int, seed: int = 0) -> FoldResult:
    rng = np.random.default_rng(seed + fold)
    val = np.arange(fold, len(LABELS), FOLDS)
    probs = rng.dirichlet(np.ones(3), size=len(val)).astype(np.float32)
    torch.manual_seed(seed + fold)
    state = {"layer.weight": torch.randn(3, 4), "layer.bias": torch.randn(3)}
    return FoldResult(fold, 0.5, 0, (), val, probs, state, 0.1, None)


def _trial(study: optuna.Study, hook: CheckpointHook) -> optuna.Trial:
    """Start a trial and train (pretend) every fold."""
    trial = study.ask()
    hook.trial_started(trial, TrainConfig())
    for fold in range(FOLDS):
        hook.fold_ended(trial, _result(fold, seed=trial.number))
    return trial


def _end(study: optuna.Study, hook: CheckpointHook, trial: optuna.Trial, **tell) -> None:
    study.tell(trial, **tell)
    hook.trial_ended(study, study.trials[trial.number])


def _folders(root: Path) -> list[int]:
    return sorted(int(p.name) for p in (root / "trials").iterdir())


@pytest.fixture
def study() -> optuna.Study:
    return optuna.create_study(direction="maximize")


def test_each_fold_saves_weights_and_out_of_fold_predictions(tmp_path, study):
    hook = CheckpointHook(tmp_path, labels=LABELS, top_k=1)
    trial = _trial(study, hook)
    folder = trial_dir(tmp_path, trial.number)

    for fold in range(FOLDS):
        expected = _result(fold, seed=trial.number)
        saved = load_file(str(weights_path(folder, fold)))
        assert all(torch.equal(saved[k], v) for k, v in expected.state_dict.items())
        indices, labels, probs = load_oof(folder, fold)
        np.testing.assert_array_equal(indices, expected.val_indices)
        np.testing.assert_array_equal(labels, LABELS[expected.val_indices])
        np.testing.assert_array_equal(probs, expected.val_probs)
    assert (folder / "config.json").is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_pruned_and_failed_trials_lose_their_checkpoints_when_they_end(tmp_path, study):
    hook = CheckpointHook(tmp_path, labels=LABELS, top_k=3)
    best = _trial(study, hook)
    _end(study, hook, best, values=0.9)
    pruned = _trial(study, hook)
    _end(study, hook, pruned, state=TrialState.PRUNED)
    failed = _trial(study, hook)
    _end(study, hook, failed, state=TrialState.FAIL)

    assert _folders(tmp_path) == [best.number]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_only_the_top_k_complete_trials_keep_checkpoints(tmp_path, direction):
    study = optuna.create_study(direction=direction)
    hook = CheckpointHook(tmp_path, labels=LABELS, top_k=2)
    values = [0.5, 0.7, 0.6, 0.9]
    for value in values:
        _end(study, hook, _trial(study, hook), values=value)

    ranked = sorted(range(4), key=lambda n: values[n], reverse=direction == "maximize")
    assert _folders(tmp_path) == sorted(ranked[:2])


def test_running_trials_keep_their_checkpoints(tmp_path, study):
    hook = CheckpointHook(tmp_path, labels=LABELS, top_k=1)
    elsewhere = _trial(study, hook)  # another worker's trial, still running
    done = _trial(study, hook)
    _end(study, hook, done, values=0.9)
    worse = _trial(study, hook)
    _end(study, hook, worse, values=0.1)

    assert _folders(tmp_path) == [elsewhere.number, done.number]


def test_an_interrupted_trial_is_swept_when_the_study_ends(tmp_path, study):
    hook = CheckpointHook(tmp_path, labels=LABELS, top_k=1)
    trial = _trial(study, hook)
    study.tell(trial, state=TrialState.FAIL)  # the runner fails it, then re-raises Ctrl-C
    hook.study_ended(study, "interrupted")
    assert _folders(tmp_path) == []


def test_a_stale_folder_of_the_same_number_is_cleared_on_start(tmp_path, study):
    stale = trial_dir(tmp_path, 0)
    stale.mkdir(parents=True)
    (stale / "fold7.safetensors").write_bytes(b"from an older study of the same name")
    hook = CheckpointHook(tmp_path, labels=LABELS, top_k=1)
    hook.trial_started(study.ask(), TrainConfig())
    assert sorted(p.name for p in stale.iterdir()) == ["config.json"]


def test_a_kill_mid_write_leaves_no_file_that_looks_valid(tmp_path, study, monkeypatch):
    hook = CheckpointHook(tmp_path, labels=LABELS, top_k=1)
    trial = study.ask()
    hook.trial_started(trial, TrainConfig())

    def killed(fd: int) -> None:
        raise KeyboardInterrupt  # stands in for the process dying before the rename

    monkeypatch.setattr(checkpoints.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        hook.fold_ended(trial, _result(0))
    folder = trial_dir(tmp_path, trial.number)
    assert not weights_path(folder, 0).exists() and not oof_path(folder, 0).exists()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]


def test_an_old_file_survives_a_failed_rewrite(tmp_path, monkeypatch):
    target = tmp_path / "fold0.safetensors"
    checkpoints.write_atomic(target, b"complete old file")
    monkeypatch.setattr(checkpoints.os, "replace", _raise(OSError(28, "No space left")))
    with pytest.raises(OSError):
        checkpoints.write_atomic(target, b"new")
    assert target.read_bytes() == b"complete old file"
    assert os.listdir(tmp_path) == ["fold0.safetensors"]


def _raise(error: BaseException):
    def fail(*_: object) -> None:
        raise error

    return fail


def test_a_full_disk_does_not_end_the_trial(tmp_path, study, monkeypatch):
    hook = CheckpointHook(tmp_path, labels=LABELS, top_k=1)
    trial = study.ask()
    monkeypatch.setattr(checkpoints, "write_atomic", _raise(OSError(28, "No space left")))
    hook.fold_ended(trial, _result(0))
    assert "No space left" in study.trials[0].user_attrs["checkpoint_error"]


def test_a_trial_that_completes_during_the_sweep_keeps_its_checkpoints(tmp_path, study):
    # Issue 24 item 2: another worker completes a new best trial between the sweep's reads.
    hook = CheckpointHook(tmp_path, labels=LABELS, top_k=1)
    old = _trial(study, hook)
    study.tell(old, 0.5)
    racing = _trial(study, hook)  # still running when the sweep starts
    reads, finished = study.get_trials, []

    def read_then_complete(*args, **kwargs):
        trials = reads(*args, **kwargs)
        if racing.number not in finished:
            finished.append(racing.number)
            study.tell(racing, 0.9)  # the other worker finishes right after this read
        return trials

    study.get_trials = read_then_complete
    hook.sweep(study)
    assert racing.number in _folders(tmp_path)

"""Out of memory in training or in evaluation: the fold is retried with what ran out reduced."""

from __future__ import annotations

import sys
import warnings
import weakref
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.engine import objective as objective_module
from search.engine.objective import Objective, StudyData
from search.engine.runner import run_trial
from search.hooks import Hooks
from search.space.spacefile import load_space
from trainer import loop
from trainer.cache import CachedImages
from trainer.loop import EpochMetrics, Split
from trainer.sources import ImageTable

SPACE = """\
backbone = "test_vit"
image_size = 32
augment = "none"
hflip = False
folds = 2
"""
SIZE = 48  # images per fold


class Epochs(Hooks):
    """Records every epoch the trainer reports, first attempts included."""

    def __init__(self) -> None:
        self.rows: list[EpochMetrics] = []

    def epoch_ended(self, trial: optuna.Trial, row: EpochMetrics) -> None:
        self.rows.append(row)


def study_data() -> StudyData:
    """Two folds of random 32 px images in three classes, already 'cached'."""
    rng = np.random.default_rng(0)
    labels = np.arange(2 * SIZE) % 3
    images = rng.integers(0, 256, (2 * SIZE, 32, 32, 3), dtype=np.uint8)
    classes = ("a", "b", "c")
    table = ImageTable("synthetic", None, (), labels, classes, None, "synthetic")
    order = np.arange(2 * SIZE)
    splits = [Split(0, order[SIZE:], order[:SIZE]), Split(1, order[:SIZE], order[SIZE:])]
    data = StudyData(table, splits, progress=False)
    data._by_size[32] = CachedImages(images, labels, classes, None, 0, None)
    return data


def run_one(tmp_path: Path, *overrides: str, hooks: Hooks | None = None) -> FrozenTrial:
    path = tmp_path / "oom.py"
    path.write_text(SPACE)
    space = load_space(path, overrides)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    objective = Objective(space, study_data(), hooks or Hooks())
    frozen, stop = run_trial(study, study.ask(), objective)
    assert stop is None
    return frozen


def out_of_memory_in_evaluation_above(limit: int, monkeypatch) -> None:
    """Models whose forward pass runs out of memory on evaluation batches above ``limit``."""
    build = loop.build_model

    def build_model(config, num_classes):
        model = build(config, num_classes)
        forward = model.forward

        def guarded(x):
            if not model.training and len(x) > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
            return forward(x)

        model.forward = guarded
        return model

    monkeypatch.setattr(loop, "build_model", build_model)


def test_out_of_memory_in_evaluation_halves_the_evaluation_batch_only(tmp_path, monkeypatch):
    out_of_memory_in_evaluation_above(16, monkeypatch)
    trial = run_one(tmp_path, "epochs=1", "batch_size=32")
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    config = trial.user_attrs["config"]
    assert config["eval_batch_size"] == 16  # 128 (the CPU default at 32 px), 64 and 32 ran out
    assert (config["batch_size"], config["grad_accum"]) == (32, 1)  # training was never short
    assert trial.user_attrs["out_of_memory_retry"] == {
        "fold": 0,
        "batch_size": 32,
        "grad_accum": 1,
        "eval_batch_size": 16,
    }


def test_out_of_memory_in_evaluation_at_batch_one_fails_the_trial(tmp_path, monkeypatch):
    out_of_memory_in_evaluation_above(0, monkeypatch)
    trial = run_one(tmp_path, "epochs=1", "batch_size=32", "eval_batch_size=2")
    assert trial.state == TrialState.FAIL
    assert "OutOfMemoryError" in trial.user_attrs["fail_reason"]
    assert trial.user_attrs["config"]["batch_size"] == 32


def test_a_fold_retried_after_its_epochs_were_reported_reports_each_step_once(
    tmp_path, monkeypatch
):
    train_epoch = loop._train_epoch

    def out_of_memory_in_third_epoch(fold, batches, runtime, config, epoch):
        if epoch == 2 and config.batch_size > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return train_epoch(fold, batches, runtime, config, epoch)

    monkeypatch.setattr(loop, "_train_epoch", out_of_memory_in_third_epoch)
    epochs = Epochs()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is already reported")
        trial = run_one(
            tmp_path, "epochs=3", "batch_size=32", "pruner_epoch_rungs=[0.3333]", hooks=epochs
        )
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    config = trial.user_attrs["config"]
    assert (config["batch_size"], config["grad_accum"], config["eval_batch_size"]) == (16, 2, None)
    # Fold 0: epochs 0 and 1 of the first attempt, then the retry's epochs 0, 1 and 2.
    first, retry = epochs.rows[:2], epochs.rows[2:5]
    assert [r.epoch for r in [*first, *retry]] == [0, 1, 0, 1, 2] and retry[0].fold == 0
    # The one epoch rung of a 3-epoch fold is after its first epoch: reported once, by the first
    # attempt; the fold's score is reported at its own rung after the retry finished the fold.
    assert trial.intermediate_values[0] == first[0].score
    assert trial.intermediate_values[1] == trial.user_attrs["fold_scores"][0]


def test_memory_is_released_after_the_failed_attempt_is_let_go(tmp_path, monkeypatch):
    fit, release = objective_module.fit, objective_module.release_memory
    failed_attempt: list[weakref.ref] = []
    seen = []

    def fit_out_of_memory_once(config, *args, **kwargs):
        if not failed_attempt:
            activations = torch.zeros(1 << 16)  # what a failed forward pass leaves behind
            failed_attempt.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fit(config, *args, **kwargs)

    def release_memory():
        release()
        seen.append((sys.exc_info()[0], failed_attempt[0]() is None))

    monkeypatch.setattr(objective_module, "fit", fit_out_of_memory_once)
    monkeypatch.setattr(objective_module, "release_memory", release_memory)
    trial = run_one(tmp_path, "epochs=1", "batch_size=32")
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
    assert seen == [(None, True)]  # outside the handler, and the attempt's tensors were freed

"""The two-axis pruner: epochs within a fold (median) and folds (Wilcoxon)."""

from __future__ import annotations

import warnings

import optuna
import pytest

from search.study.pruning import (
    build_pruner,
    epoch_step,
    epoch_values,
    fold_step,
    fold_values,
)

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def finished_trial(study: optuna.Study, curve: list[float], folds: list[float]) -> None:
    """A complete trial whose every fold followed ``curve`` and scored ``folds``."""
    trial = study.ask()
    for fold, score in enumerate(folds):
        for epoch, value in enumerate(curve):
            trial.report(value, epoch_step(fold, epoch))
        trial.report(score, fold_step(fold))
    study.tell(trial, sum(folds) / len(folds))


def make_study(pruner: str) -> optuna.Study:
    return optuna.create_study(
        direction="maximize",
        pruner=build_pruner(pruner, startup_trials=2, warmup_epochs=1, p_threshold=0.1),
    )


def test_steps_are_chronological_and_decode():
    steps = [epoch_step(0, 0), epoch_step(0, 5), fold_step(0), epoch_step(1, 0), fold_step(1)]
    assert steps == sorted(steps)
    values = dict(zip(steps, [1.0, 2.0, 3.0, 4.0, 5.0], strict=True))
    assert fold_values(values) == {0: 3.0, 1: 5.0}
    assert epoch_values(values, 0) == {0: 1.0, 5: 2.0}
    assert epoch_values(values, 1) == {0: 4.0}


def test_a_hopeless_trial_is_pruned_within_its_first_fold():
    study = make_study("median")
    for _ in range(3):
        finished_trial(study, [0.5, 0.8, 0.9], [0.9, 0.9, 0.9])
    trial = study.ask()
    trial.report(0.1, epoch_step(0, 0))
    assert not trial.should_prune()  # warm-up epoch
    trial.report(0.12, epoch_step(0, 1))
    assert trial.should_prune()


def test_a_good_trial_is_not_pruned_and_later_folds_compare_with_the_same_fold():
    study = make_study("median")
    for _ in range(3):
        finished_trial(study, [0.5, 0.8, 0.9], [0.9, 0.9, 0.9])
    trial = study.ask()
    for fold in range(2):
        for epoch, value in enumerate([0.6, 0.85, 0.95]):
            trial.report(value, epoch_step(fold, epoch))
            assert not trial.should_prune()
        trial.report(0.95, fold_step(fold))
        assert not trial.should_prune()


def test_fold_rule_prunes_a_consistently_worse_trial_after_enough_folds():
    study = make_study("wilcoxon")
    finished_trial(study, [0.9], [0.91, 0.92, 0.93, 0.94, 0.95])
    trial = study.ask()
    pruned_after = None
    for fold, score in enumerate([0.70, 0.71, 0.72, 0.73]):
        trial.report(0.1, epoch_step(fold, 0))
        assert not trial.should_prune()  # "wilcoxon" has no epoch rule
        trial.report(score, fold_step(fold))
        if trial.should_prune():
            pruned_after = fold + 1
            break
    # With one-sided differences the smallest p-value is 0.0625 after 4 folds (< 0.1).
    assert pruned_after == 4


@pytest.mark.parametrize("name", ["none"])
def test_no_pruner_never_prunes(name):
    study = make_study(name)
    for _ in range(3):
        finished_trial(study, [0.9, 0.9], [0.9, 0.9])
    trial = study.ask()
    trial.report(0.0, epoch_step(0, 0))
    trial.report(0.0, epoch_step(0, 1))
    assert not trial.should_prune()

"""Pruning at rungs: the rung median over every trial that reached it, the paired fold rule."""

from __future__ import annotations

import statistics
import warnings

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.keys import FOLD_SCORES, SCORE_STD
from search.space.settings import SETTINGS
from search.study.paired import compare_with_best
from search.study.pruning import (
    Rungs,
    build_pruner,
    explain_fold_prune,
    explain_rung_prune,
)

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
RUNGS = Rungs((1 / 3,), folds=5)  # step 0: a third of fold 0; step n: n folds done


def make_study(pruner: str = "median", min_peers: int = 3) -> optuna.Study:
    return optuna.create_study(
        direction="maximize",
        pruner=build_pruner(pruner, rungs=RUNGS, min_peers=min_peers, p=0.1),
    )


def add(study: optuna.Study, first: float, folds: list[float], state=TrialState.COMPLETE) -> None:
    """A finished trial: ``first`` at the epoch rung, then the running mean after each fold."""
    values = {0: first}
    for n in range(1, min(len(folds), RUNGS.folds - 1) + 1):
        values[RUNGS.fold_step(n)] = statistics.fmean(folds[:n])
    attrs = {FOLD_SCORES: folds, SCORE_STD: statistics.pstdev(folds) if len(folds) > 1 else 0.0}
    complete = state == TrialState.COMPLETE
    study.add_trial(
        create_trial(
            state=state,
            value=statistics.fmean(folds) if complete else None,
            intermediate_values=values,
            user_attrs=attrs,
        )
    )


def running(study: optuna.Study, first: float) -> optuna.Trial:
    trial = study.ask()
    trial.report(first, 0)
    return trial


def after_folds(trial: optuna.Trial, folds: list[float]) -> int | None:
    """Report ``folds`` one by one as the objective does; the folds done when it is pruned."""
    for n in range(1, len(folds) + 1):
        trial.set_user_attr(FOLD_SCORES, folds[:n])
        trial.report(statistics.fmean(folds[:n]), RUNGS.fold_step(n))
        if trial.should_prune():
            return n
    return None


def test_rungs_sit_at_the_same_fraction_of_every_schedule():
    assert RUNGS.epoch_steps(12) == {3: 0}  # epoch 4 of 12
    assert RUNGS.epoch_steps(6) == {1: 0}  # epoch 2 of 6: the same step, the same third
    assert RUNGS.epoch_steps(1) == {}  # the fold's only epoch is the fold's end
    two = Rungs((0.2, 0.25), folds=3)
    assert two.epoch_steps(4) == {0: 0}  # both fractions fall on epoch 1: one rung
    assert [two.fold_step(n) for n in (1, 2)] == [2, 3]
    assert [two.folds_done(s) for s in (0, 1, 2, 3)] == [0, 0, 1, 2]


def test_a_bad_trial_is_stopped_at_the_first_rung_and_a_good_one_goes_on():
    study = make_study()
    for first in (0.5, 0.6, 0.7):
        add(study, first, [0.9] * 5)
    assert running(study, 0.3).should_prune()
    assert not running(study, 0.65).should_prune()


def test_no_rung_prunes_before_enough_trials_reached_it():
    study = make_study(min_peers=3)
    for first in (0.5, 0.6):
        add(study, first, [0.9] * 5)
    assert not running(study, 0.1).should_prune()


def test_the_reference_at_a_rung_includes_pruned_trials():
    study = make_study()
    for _ in range(3):
        add(study, 0.9, [0.95] * 5)
    for _ in range(6):  # pruned at the epoch rung: they reached it too
        add(study, 0.3, [], state=TrialState.PRUNED)
    trial = running(study, 0.6)
    assert not trial.should_prune()  # median of all nine trials at the rung: 0.3
    # Optuna's percentile rule compares with the three complete trials only and would prune it.
    frozen = study.trials[trial.number]
    percentile = optuna.pruners.PercentilePruner(50.0, n_startup_trials=1, n_min_trials=1)
    assert percentile.prune(study, frozen)
    reason = explain_rung_prune(study, trial.number, 0, 0.6, "fold 0, epoch 2")
    assert "median 0.3000 of the 9 other trials (complete and pruned)" in reason


def test_a_trial_near_the_best_after_four_of_five_folds_survives():
    study = make_study()
    best = [0.74, 0.72, 0.76, 0.73, 0.75]  # fold std 0.0141
    add(study, 0.6, best)
    near = [0.73, 0.71, 0.75, 0.72]  # worse on every fold, by 0.01
    assert after_folds(running(study, 0.6), near) is None
    # The same scores under Optuna's Wilcoxon test alone: 4 one-sided pairs, p = 0.0625 < 0.1.
    wilcoxon = optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    raw = optuna.create_study(direction="maximize", pruner=wilcoxon)
    raw.add_trial(create_trial(value=0.74, intermediate_values=dict(enumerate(best))))
    trial = raw.ask()
    for fold, score in enumerate(near):
        trial.report(score, fold)
    assert trial.should_prune()
    # hpo's wilcoxon pruner keeps the guard.
    guarded = make_study("wilcoxon")
    add(guarded, 0.6, best)
    assert after_folds(running(guarded, 0.6), near) is None


def test_a_clearly_worse_trial_is_stopped_after_two_folds():
    study = make_study()
    add(study, 0.6, [0.95, 0.96, 0.94, 0.95, 0.96])
    for first in (0.5, 0.6):
        add(study, first, [0.9] * 5)
    trial = running(study, 0.7)
    trial.set_user_attr(FOLD_SCORES, [0.91])
    trial.report(0.91, RUNGS.fold_step(1))
    assert not trial.should_prune()  # after one fold: at the rung median, not below it
    trial.set_user_attr(FOLD_SCORES, [0.91, 0.90])
    trial.report(0.905, RUNGS.fold_step(2))
    assert trial.should_prune()  # the paired rule, two folds in
    reason = explain_fold_prune(study, [0.91, 0.90], 0.1)
    assert reason.startswith("after 2 folds: mean 0.9050 against 0.9550 for the best trial 0")


def test_a_trial_within_the_noise_is_not_stopped_early():
    study = make_study()
    add(study, 0.6, [0.95, 0.97, 0.93, 0.95, 0.96])  # fold std 0.0133
    assert after_folds(running(study, 0.7), [0.945, 0.962]) is None  # gap 0.0065 after 2 folds


def test_the_noise_of_a_paired_difference_is_measured_on_the_best_trials():
    # Fold scores of a real study (bench/search_quality.py, 3 folds, 20% noisy labels): four
    # complete trials of about the same quality, the best one with folds that happen to agree.
    study = make_study()
    for folds in ([0.725, 0.713, 0.729], [0.689, 0.719, 0.747], [0.737, 0.701, 0.719]):
        add(study, 0.5, folds)
    add(study, 0.4, [0.707, 0.695, 0.747])
    for _ in range(3):
        add(study, 0.3, [0.6], state=TrialState.PRUNED)  # stopped after fold 0
    found = compare_with_best(study, [0.719, 0.689])
    assert found.best_std < 0.007 < 0.02 < found.pair_noise
    # As good as those four but for chance: the gap 0.015 is within the pairs' noise. With the
    # best trial's fold std as the noise (0.0068) the rule pruned it, two thirds through.
    assert after_folds(running(study, 0.5), [0.719, 0.689]) is None
    assert after_folds(running(study, 0.5), [0.70, 0.66]) == 2  # clearly worse: stopped


def test_wilcoxon_cannot_act_before_four_folds():
    study = make_study("wilcoxon")
    add(study, 0.6, [0.91, 0.92, 0.93, 0.94, 0.95])
    trial = running(study, 0.1)
    assert not trial.should_prune()  # no epoch rule
    assert after_folds(trial, [0.70, 0.71, 0.72, 0.73]) == 4


def test_nan_at_a_rung_prunes_and_none_never_prunes():
    study = make_study()
    assert running(study, float("nan")).should_prune()
    nothing = make_study("none")
    for first in (0.5, 0.6, 0.7):
        add(nothing, first, [0.9] * 5)
    assert not running(nothing, 0.0).should_prune()


@pytest.mark.parametrize("name", ["median", "wilcoxon", "none"])
def test_every_pruner_name_that_is_accepted_builds(name):
    assert SETTINGS["pruner"].check(name) is None
    build_pruner(name, rungs=RUNGS, min_peers=1, p=0.1)


def test_percentile_is_no_longer_a_pruner_name():
    assert "must be one of median, wilcoxon, none" in SETTINGS["pruner"].check("percentile")

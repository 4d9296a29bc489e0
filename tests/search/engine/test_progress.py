"""What `hpo run` prints per trial: one line within the terminal's width, a pruned trial's
reason in a few words (the full reason stays in the trial's attributes)."""

from __future__ import annotations

import io

import optuna
from optuna.pruners import BasePruner
from optuna.trial import TrialState, create_trial
from rich.console import Console

from search.engine.progress import Progress, trial_line
from search.engine.rungs import RungReporter
from search.keys import EPOCHS, FOLD_SCORES, PRUNED_AT, PRUNED_REASON, SCORE_STD, SECONDS
from search.study.pruning import Rungs

PARAMS = {
    "backbone": "mobilenetv3_small_050.lamb_in1k",
    "lr": 0.0031234,
    "weight_decay": 0.00012345,
    "batch_size": 64,
    "dropout": 0.2345,
    "loss": "label_smoothing",
    "label_smoothing": 0.1234,
    "optimizer": "adamw",
}
# A real fold-rule reason is about 350 characters: three noise figures in it.
LONG_REASON = (
    "after 2 folds: mean 0.8530 against 0.9950 for the best trial 7 on the same folds; the gap "
    "0.1420 is larger than noise explains (0.0312: one-sided p=0.1, noise 0.0123 per fold: the "
    "largest of the paired-difference std among the best trials 0.0123, the best trial's fold "
    "std 0.0045 and this trial's 0.0101)"
)
BRIEF = "pruned after 2 folds: 0.8530 vs best 0.9950 (gap > noise)"


def _pruned(brief: str | None = BRIEF) -> optuna.trial.FrozenTrial:
    where = {"fold": 1, "epoch": None, "rung": 3, "score": 0.853}
    if brief is not None:
        where["brief"] = brief
    attrs = {
        FOLD_SCORES: [0.85, 0.856],
        EPOCHS: 12,
        SECONDS: 31.5,
        PRUNED_AT: where,
        PRUNED_REASON: LONG_REASON,
    }
    distributions = {
        k: optuna.distributions.CategoricalDistribution([v]) for k, v in PARAMS.items()
    }
    return create_trial(
        state=TrialState.PRUNED, params=PARAMS, distributions=distributions, user_attrs=attrs
    )


def test_a_pruned_trials_line_is_one_short_line_within_the_width():
    line = trial_line(_pruned(), width=80)

    assert len(line) <= 80 and "\n" not in line
    assert BRIEF in line and "noise 0.0123" not in line


def test_without_a_brief_reason_the_line_says_where_the_trial_stopped():
    line = trial_line(_pruned(brief=None), width=100)

    assert len(line) <= 100 and "pruned at fold 1: 0.8530" in line


def test_a_log_gets_one_line_per_trial_within_the_width():
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(value=0.995, user_attrs={SCORE_STD: 0.002, FOLD_SCORES: [1]}))
    study.add_trial(_pruned())
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)

    with Progress(study, target=50, folds=5, console=console) as progress:
        progress.trial_ended(study, study.trials[1])

    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines)
    assert lines[1].startswith(f"trial 1 {BRIEF}")


class _Always(BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def _study_with_best() -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=_Always())
    for value, folds in ((0.995, [0.99, 0.995, 0.998]), (0.98, [0.97, 0.985, 0.985])):
        attrs = {FOLD_SCORES: folds, SCORE_STD: 0.004}
        study.add_trial(
            create_trial(value=value, user_attrs=attrs, intermediate_values={0: 0.9, 1: 0.9})
        )
    return study


def test_the_reporter_keeps_a_brief_reason_beside_the_full_one():
    study = _study_with_best()
    reporter = RungReporter(study.ask(), Rungs((0.5,), folds=3), epochs=4, p=0.1)

    assert reporter.after_fold(0, [0.85]) is not None  # pruned after one fold: the median rule
    assert reporter.pruned_at["brief"] == "pruned after fold 0: 0.8500 below the median 0.9000"
    reporter = RungReporter(study.ask(), Rungs((0.5,), folds=3), epochs=4, p=0.1)
    reporter.done = 1
    full = reporter.after_fold(1, [0.85, 0.856])

    assert (
        reporter.pruned_at["brief"] == "pruned after 2 folds: 0.8530 vs best 0.9925 (gap > noise)"
    )
    assert full.startswith("after 2 folds: mean 0.8530 against 0.9925 for the best trial 0")


def test_an_epoch_rungs_brief_reason_names_fold_and_epoch():
    study = _study_with_best()
    reporter = RungReporter(study.ask(), Rungs((0.5,), folds=3), epochs=4, p=0.1)

    assert reporter.after_epoch(0, 1, 0.5) is not None

    assert reporter.pruned_at["brief"] == (
        "pruned at fold 0, epoch 2/4: 0.5000 below the median 0.9000"
    )

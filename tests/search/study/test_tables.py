"""Tables of trials: a pruned trial's rung score is never shown as a cross-validated mean."""

from __future__ import annotations

import csv
import io

import optuna
from optuna.trial import TrialState, create_trial
from rich.console import Console

from search.keys import (
    DIVERGED,
    EPOCHS,
    FAIL_REASON_ATTR,
    FOLD_SCORES,
    PRUNED_AT,
    PRUNED_REASON,
    SCORE_STD,
    WARM_START_FROM,
)
from search.study.tables import ranked, trials_table
from search.tracking.artifacts import trials_csv


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    done = {FOLD_SCORES: [0.91, 0.93], SCORE_STD: 0.01, EPOCHS: 12}
    study.add_trial(create_trial(value=0.92, user_attrs=done))
    early = {
        FOLD_SCORES: [],
        EPOCHS: 2,
        PRUNED_AT: {"fold": 0, "epoch": 2, "rung": 0, "score": 0.7123},
        PRUNED_REASON: "fold 0, epoch 2 of 6 (1/3 of its schedule), best so far: below",
    }
    study.add_trial(
        create_trial(state=TrialState.PRUNED, intermediate_values={0: 0.7123}, user_attrs=early)
    )
    late = {
        FOLD_SCORES: [0.90, 0.80],
        EPOCHS: 12,
        PRUNED_AT: {"fold": 1, "epoch": None, "rung": 2, "score": 0.85},
        PRUNED_REASON: "after 2 folds: ...",
        WARM_START_FROM: "other#4",
    }
    study.add_trial(
        create_trial(state=TrialState.PRUNED, intermediate_values={2: 0.85}, user_attrs=late)
    )
    nan = {DIVERGED: True, PRUNED_AT: {"fold": 1, "epoch": None, "rung": None}}
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={**nan, FOLD_SCORES: [0.9]}))
    return study


def _text(study: optuna.Study, width: int = 200) -> list[str]:
    console = Console(width=width, record=True)
    console.print(trials_table(study))
    return console.export_text().splitlines()


def _rows(lines: list[str]) -> dict[str, str]:
    return {line.split()[0]: line for line in lines if line[:1].isdigit()}


def test_pruned_trials_show_where_they_stopped_and_their_score_there():
    study = _study()
    rows = _rows(_text(study))
    assert "0.9200 ± 0.0100" in rows["0"]
    assert "fold 0, ep 2: 0.7123" in rows["1"]
    assert "fold 1: 0.8500" in rows["2"] and "copied from other#4" in rows["2"]
    assert "diverged in fold 1" in rows["3"]
    # No pruned row has a number in the CV column (the old table showed "(0.8500)").
    for number in ("1", "2", "3"):
        assert rows[number].split()[2] == "-"
    assert [t.number for t in ranked(study, study.trials)] == [0, 2, 1, 3]


def test_the_cross_validated_column_says_it_is_optimistic():
    lines = _text(_study())
    header = next(line for line in lines if "state" in line)
    assert "CV (optimistic)" in header
    assert any("best of many trials (optimistic" in line for line in lines)


def test_the_table_fits_80_columns_with_one_line_per_trial():
    study = _study()
    params = {"backbone": "mobilenetv3_small_050.lamb_in1k", "lr": 0.00123, "loss": "ce"}
    distributions = {
        "backbone": optuna.distributions.CategoricalDistribution([params["backbone"]]),
        "lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
        "loss": optuna.distributions.CategoricalDistribution(["ce"]),
    }
    attrs = {FOLD_SCORES: [0.9] * 5, SCORE_STD: 0.01, EPOCHS: 60, FAIL_REASON_ATTR: "x" * 300}
    for lr, state in ((0.002, TrialState.COMPLETE), (0.003, TrialState.FAIL)):
        value = 0.9 if state == TrialState.COMPLETE else None
        params_here = {**params, "lr": lr}
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params=params_here,
                distributions=distributions,
                user_attrs=attrs,
            )
        )

    lines = _text(study, width=80)

    assert all(len(line) <= 80 for line in lines)
    assert sorted(_rows(lines)) == ["0", "1", "2", "3", "4", "5"]  # no row wraps
    assert "lr=0.002" in _rows(lines)["4"]


def test_trials_csv_keeps_a_pruned_score_out_of_the_value_column():
    rows = list(csv.DictReader(io.StringIO(trials_csv(_study().trials))))
    assert rows[0]["cv_optimistic_mean"] == "0.92" and rows[0]["pruned_score"] == ""
    assert rows[1]["cv_optimistic_mean"] == "" and rows[1]["pruned_score"] == "0.7123"
    assert rows[1]["pruned_at"] == "fold 0, epoch 2"


def test_a_study_without_trials_prints_an_empty_table():
    lines = _text(optuna.create_study(), width=80)

    assert any("CV (optimistic)" in line for line in lines) and not _rows(lines)

"""`hpo status`: the table fits the terminal (COLUMNS), and `--trial N` shows one trial in full."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.cli.main import main
from search.keys import (
    EPOCHS,
    FAIL_REASON_ATTR,
    FINGERPRINT_ATTR,
    FOLD_SCORES,
    PRUNED_AT,
    PRUNED_REASON,
    SCORE_STD,
    SECONDS,
)

LONG_REASON = (
    "after 2 folds: mean 0.8530 against 0.9950 for the best trial 0 on the same folds; the gap "
    "0.1420 is larger than noise explains (0.0312: one-sided p=0.1, noise 0.0123 per fold: the "
    "largest of the paired-difference std among the best trials 0.0123, the best trial's fold "
    "std 0.0045 and this trial's 0.0101)"
)
BACKBONES = ("mobilenetv3_small_050.lamb_in1k", "convnext_atto.d2_in1k", "resnet18.a1_in1k")


def _params(i: int) -> tuple[dict, dict]:
    params = {
        "backbone": BACKBONES[i % 3],
        "lr": 0.001234567 * (i + 1),
        "weight_decay": 0.0001234 * (i + 1),
        "dropout": 0.05 * i,
        "loss": "label_smoothing",  # the same in every trial: not worth a column's room
        "optimizer": ("adamw", "sgd")[i % 2],
    }
    distributions = {
        "backbone": CategoricalDistribution(BACKBONES),
        "lr": FloatDistribution(1e-4, 1.0, log=True),
        "weight_decay": FloatDistribution(1e-6, 1.0, log=True),
        "dropout": FloatDistribution(0.0, 0.5),
        "loss": CategoricalDistribution(["ce", "label_smoothing"]),
        "optimizer": CategoricalDistribution(["adamw", "sgd"]),
    }
    return params, distributions


def _add(study: optuna.Study, i: int, **kwargs) -> None:
    params, distributions = _params(i)
    attrs = {FOLD_SCORES: [0.9] * 5, SCORE_STD: 0.0123, EPOCHS: 60, SECONDS: 1234.5}
    attrs.update(kwargs.pop("user_attrs", {}))
    study.add_trial(
        create_trial(params=params, distributions=distributions, user_attrs=attrs, **kwargs)
    )


def _make_study(name: str = "wide") -> optuna.Study:
    folder = Path("studies") / name
    folder.mkdir(parents=True)
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{folder / 'study.db'}", direction="maximize"
    )
    study.set_user_attr(FINGERPRINT_ATTR, "test")
    for i in range(6):
        _add(study, i, value=0.99 - i / 100)
    pruned = {
        FOLD_SCORES: [0.85, 0.856],
        PRUNED_AT: {"fold": 1, "epoch": None, "rung": 3, "score": 0.853},
        PRUNED_REASON: LONG_REASON,
    }
    _add(study, 6, state=TrialState.PRUNED, user_attrs=pruned, intermediate_values={3: 0.853})
    failed = {FAIL_REASON_ATTR: "RuntimeError: " + "a very long failure message " * 10}
    _add(study, 7, state=TrialState.FAIL, user_attrs=failed)
    return study


def test_status_fits_80_columns_one_line_per_trial(monkeypatch, capsys):
    _make_study()
    monkeypatch.setenv("COLUMNS", "80")

    assert main(["status", "wide"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    starts = [line.split()[0] for line in lines if line.strip()]
    for number in range(8):
        assert starts.count(str(number)) == 1  # one line per trial, no wrapped rows
    assert "loss=" not in "\n".join(lines)  # the same everywhere: left out


def test_status_follows_a_wider_terminal(monkeypatch, capsys):
    _make_study()
    monkeypatch.setenv("COLUMNS", "120")

    assert main(["status", "wide"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 120 for line in lines)
    assert any(len(line) > 100 for line in lines)  # uses the room it has


def test_status_of_one_trial_shows_its_full_reason_and_every_parameter(capsys):
    _make_study()

    assert main(["status", "wide", "--trial", "6"]) == 0

    out = " ".join(capsys.readouterr().out.split())  # whatever the wrapping
    assert LONG_REASON in out
    assert "loss label_smoothing" in out and "backbone mobilenetv3_small_050.lamb_in1k" in out
    assert "0.8500, 0.8560" in out


def test_status_of_a_trial_that_does_not_exist_is_one_line(capsys):
    _make_study()

    assert main(["status", "wide", "--trial", "99"]) == 2

    err = capsys.readouterr().err.strip()
    assert err == (
        "hpo: error: Study 'wide' has no trial 99 (its trials are 0 to 7); pass one of those."
    )

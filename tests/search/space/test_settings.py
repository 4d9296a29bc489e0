"""Study settings: one frozen object, checked once, with metric and seed among them."""

from __future__ import annotations

import ast
import dataclasses
import json
import textwrap
from pathlib import Path

import optuna
import pytest

from search.space import SpaceError
from search.space.settings import SETTINGS, StudySettings
from search.space.spacefile import load_space
from search.study.storage import StudyPlace
from trainer.config import TrainConfig
from trainer.errors import ConfigError

HEADER = "from search.space import choice, intrange, loguniform, uniform\n"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "space.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def error_of(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(SpaceError) as caught:
        load_space(path, overrides)
    return str(caught.value)


def test_settings_are_one_frozen_object_read_by_attribute(tmp_path):
    space = load_space(write(tmp_path, "folds = 3\nmetric = 'log_loss'\nseed = 7\n"))
    settings = space.settings
    assert isinstance(settings, StudySettings)
    assert (settings.folds, settings.metric, settings.seed) == (3, "log_loss", 7)
    assert settings.sampler == SETTINGS["sampler"].default  # defaults filled in
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.folds = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings["folds"]  # type: ignore[index]  # no string-key reads


def test_the_by_name_views_split_the_settings_by_role():
    settings = StudySettings()
    assert list(settings.to_dict()) == list(SETTINGS)
    identity, control = settings.identity(), settings.run_control()
    assert "data" not in identity and "folds" in identity and "trials" not in identity
    assert "trials" in control and "folds" not in control
    assert settings.for_trainer() == {"metric": "f1_macro", "seed": 0}
    assert not {"metric", "seed"} & (identity.keys() | control.keys())


@pytest.mark.parametrize(
    ("body", "overrides", "expected"),
    [
        ("foldz = 3\n", (), "space.py:2: unknown name 'foldz'; did you mean 'folds'?"),
        ("metrc = 'accuracy'\n", (), "space.py:2: unknown name 'metrc'; did you mean 'metric'?"),
        ("folds = 1\n", (), "space.py:2: folds=1 must be an integer of at least 2."),
        ("", ("folds=1",), "command line 'folds=...': folds=1 must be an integer of at least 2."),
        ("sampler = 'bayes'\n", (), "space.py:2: sampler='bayes' must be one of tpe, random,"),
        ("metric = 'auc'\n", (), "space.py:2: metric='auc' is not allowed; use one of 'f1_macro'"),
        ("seed = 1.5\n", (), "space.py:2: seed=1.5 has the wrong type; it must be an integer."),
    ],
)
def test_an_unknown_or_bad_setting_is_one_sentence(tmp_path, body, overrides, expected):
    path = write(tmp_path, body)
    message = error_of(path, overrides)
    assert message.replace(str(path), "space.py").startswith(expected)


def test_a_searched_seed_is_refused_like_any_study_setting(tmp_path):
    path = write(tmp_path, "seed = choice(0, 1, 2)\n")
    assert error_of(path) == (
        f"{path}:2: 'seed' cannot be searched: it is fixed for the whole study; give it one value."
    )


def test_a_searched_metric_is_refused_with_its_reason(tmp_path):
    path = write(tmp_path, "metric = choice('log_loss', 'accuracy')\n")
    assert error_of(path) == (
        f"{path}:2: 'metric' cannot be searched: it decides whether the study maximises or "
        "minimises its score, so it is fixed for the whole study; give it one value, e.g. "
        "metric = 'f1_macro'."
    )


def test_metric_and_seed_reach_every_trial_config(tmp_path):
    space = load_space(write(tmp_path, "metric = 'accuracy'\nlr = loguniform(1e-4, 1e-2)\n"))
    config = space.config({"lr": 1e-3})
    assert (config.metric, config.seed, config.lr) == ("accuracy", 0, 1e-3)
    assert space.fixed["metric"] == "accuracy" and space.fixed["seed"] == 0
    # As when they were TrainConfig fields: the identity holds them only where they are given.
    assert space.identity()["fixed"] == {"metric": "accuracy"}
    assert load_space(space.path, ["seed=5"]).config({}).seed == 5


# hpo's study settings when the pinned studies below were made.
THEN = [
    "sampler=tpe",
    "pruner=median",
    "pruner_startup_trials=3",
    "pruner_epoch_rungs=[0.3333333333333333]",
    "pruner_p=0.1",
]


@pytest.mark.parametrize(
    ("body", "fixed", "fingerprint"),
    [
        # Fingerprints of studies made while metric and seed were TrainConfig fields.
        ("epochs = 3\nfolds = 2\n", {"epochs": 3}, "c1ced9a0d3a7c1a9"),
        (
            "epochs = 3\nmetric = 'log_loss'\nseed = 1\n",
            {"epochs": 3, "metric": "log_loss", "seed": 1},
            "a207f0dcee4a38e6",
        ),
    ],
)
def test_the_identity_of_existing_studies_is_unchanged(tmp_path, body, fixed, fingerprint):
    path = tmp_path / "s.py"
    path.write_text(
        "from search.space import choice, loguniform\n" + body + "lr = loguniform(1e-4, 1e-2)\n"
    )
    # The study settings those studies were created with, which a resumed study keeps where
    # its space leaves them to today's defaults (search.study.identity.keep_created_settings).
    space = load_space(path, THEN)
    assert space.identity()["fixed"] == fixed
    assert space.fingerprint() == fingerprint


def test_a_resumed_study_keeps_every_setting_it_stored_unless_the_space_gives_it(tmp_path):
    from search.study.identity import keep_created_settings

    path = tmp_path / "s.py"
    path.write_text("from search.space import loguniform\nlr = loguniform(1e-4, 1e-2)\n")
    other = ["sampler=qmc", "pruner=wilcoxon", "pruner_startup_trials=5",
             "pruner_epoch_rungs=[0.25, 0.5]", "pruner_p=0.2"]  # fmt: skip
    made = load_space(path, other)  # as if those had been the defaults when it was made
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr("hpo.identity", json.loads(json.dumps(made.identity(), default=list)))
    place = StudyPlace.of("s", None)
    resumed, said = keep_created_settings(storage, place, load_space(path))
    assert resumed.fingerprint() == made.fingerprint()
    assert resumed.settings.pruner_epoch_rungs == (0.25, 0.5)
    assert said is not None and "pruner = 'wilcoxon' (the default is now 'median')" in said
    given, said = keep_created_settings(storage, place, load_space(path, ["pruner_p=0.05"]))
    assert given.settings.pruner_p == 0.05 and "pruner_p" not in str(said)


@pytest.mark.parametrize(
    "line",
    [
        "epochs = 0",
        "epochs = 2.5",
        "optimizer = 'adamx'",
        "dropout = 1.5",
        "class_weights = 'even'",
        "grad_clip = 0.0",
        "metric = 'auc'",
        "seed = 1.5",
    ],
)
def test_a_space_file_and_train_config_say_the_same(tmp_path, line):
    # One check (trainer.checks) for both: the space file only adds where the value is.
    name, _, text = line.partition(" = ")
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**{name: ast.literal_eval(text)})
    path = write(tmp_path, line + "\n")
    assert error_of(path) == f"{path}:2: {caught.value}"

"""Space files: parsing, overrides, conditions, and every error a user can make."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from search.space import SpaceError, choice, intrange, loguniform, uniform
from search.space.settings import StudySettings
from search.space.spacefile import load_space, parse_overrides

HEADER = "from search.space import choice, intrange, loguniform, uniform\n"
TRAINER_SETTINGS = StudySettings().for_trainer()  # metric and seed: in every trial's config


def write(tmp_path: Path, body: str, name: str = "space.py") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def error_of(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(SpaceError) as caught:
        load_space(path, overrides)
    return str(caught.value)


def test_literals_are_fixed_and_distributions_searched(tmp_path):
    path = write(
        tmp_path,
        """
        epochs = 3
        folds = 4
        lr = loguniform(1e-4, 1e-2)
        batch_size = choice(16, 32)
        """,
    )
    space = load_space(path)
    assert space.fixed == {"epochs": 3, **TRAINER_SETTINGS}
    assert space.settings.folds == 4
    assert set(space.searched) == {"lr", "batch_size"}
    assert space.name == "space"
    dist = space.searched["lr"].distribution
    assert isinstance(dist, optuna.distributions.FloatDistribution) and dist.log


def test_helpers_map_one_to_one_onto_optuna_distributions():
    assert choice("a", "b").distribution == optuna.distributions.CategoricalDistribution(["a", "b"])
    assert uniform(0.0, 0.5).distribution == optuna.distributions.FloatDistribution(0.0, 0.5)
    assert intrange(1, 9, step=2).distribution == optuna.distributions.IntDistribution(1, 9, step=2)
    assert loguniform(1e-3, 1.0).distribution == optuna.distributions.FloatDistribution(
        1e-3, 1.0, log=True
    )


def test_conditional_parameters_are_absent_when_condition_is_false(tmp_path):
    path = write(
        tmp_path,
        """
        focal_gamma = uniform(0.5, 3.0, when={"loss": "focal"})
        loss = choice("ce", "focal")
        label_smoothing = uniform(0.0, 0.2, when={"loss": ["ce"]})
        """,
    )
    space = load_space(path)
    assert next(iter(space.searched)) == "loss"  # conditions resolve first, whatever the file order
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {"ce": 0, "focal": 0}
    for _ in range(30):
        trial = study.ask()
        params = space.sample(trial)
        seen[params["loss"]] += 1
        assert ("focal_gamma" in params) == (params["loss"] == "focal")
        assert ("label_smoothing" in params) == (params["loss"] == "ce")
        config = space.config(params)
        assert config.focal_gamma == params.get("focal_gamma", 2.0)
        study.tell(trial, 0.0)
    assert seen["ce"] and seen["focal"]


def test_condition_on_a_fixed_value_follows_overrides(tmp_path):
    path = write(tmp_path, 'loss = "ce"\nfocal_gamma = uniform(0.5, 3.0, when={"loss": "focal"})\n')
    study = optuna.create_study()
    assert load_space(path).sample(study.ask()) == {}
    params = load_space(path, ["loss=focal"]).sample(study.ask())
    assert set(params) == {"focal_gamma"}


def test_overrides_are_typed_and_beat_the_file(tmp_path):
    path = write(tmp_path, "lr = loguniform(1e-4, 1e-2)\nepochs = 3\n")
    space = load_space(path, ["lr=0.01", "epochs=5", "grad_clip=None", "hflip=false"])
    given = {"lr": 0.01, "epochs": 5, "grad_clip": None, "hflip": False}
    assert space.fixed == {**given, **TRAINER_SETTINGS}
    assert "lr" not in space.searched
    assert parse_overrides(["backbone=resnet18", "pretrained=/w/x.pth"]) == {
        "backbone": "resnet18",
        "pretrained": "/w/x.pth",
    }


def test_identity_ignores_run_control_and_hardware(tmp_path):
    path = write(tmp_path, "epochs = 3\nlr = loguniform(1e-4, 1e-2)\n")
    base = load_space(path).fingerprint()
    assert load_space(path, ["trials=99", "device=cpu", "data=/elsewhere"]).fingerprint() == base
    assert load_space(path, ["epochs=4"]).fingerprint() != base


def test_shipped_spaces_load():
    root = Path(__file__).resolve().parents[2] / "spaces"
    for path in sorted(root.glob("*.py")):
        space = load_space(path)
        assert space.searched, path


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("lr_rate = 0.1\n", "unknown name 'lr_rate'; did you mean 'lr'"),
        ("epocs = 3\n", "did you mean 'epochs'"),
        ("lr = loguniform(0.1, 0.01)\n", "lr = loguniform(0.1, 0.01): low must be below high"),
        ("lr = loguniform(0.0, 0.1)\n", "low must be above 0 on a log scale"),
        ("dropout = uniform(0.0, 1.5)\n", "dropout=1.5 must be in [0, 1)"),
        ("epochs = 2.5\n", "epochs=2.5 has the wrong type; it must be an integer"),
        ("epochs = uniform(1, 5)\n", "epochs takes integers; search it with intrange()"),
        ("loss = choice('ce', 'hinge')\n", "loss='hinge' is not allowed"),
        ("batch_size = choice()\n", "batch_size = choice(): needs at least one option"),
        ("lr = uniform('a', 1.0)\n", "lr = uniform('a', 1.0): bounds must be numbers"),
        ("folds = choice(3, 5)\n", "'folds' cannot be searched"),
        ("folds = 1\n", "folds=1 must be an integer of at least 2"),
        ("sampler = 'bayes'\n", "sampler='bayes' must be one of tpe, random"),
        ("focal_gamma = uniform(1.0, 2.0, when={'los': 'focal'})\n", "unknown parameter 'los'"),
        (
            "loss = choice('ce', 'focal')\n"
            "focal_gamma = uniform(1.0, 2.0, when={'loss': 'fokal'})\n",
            "a value 'loss' can never take",
        ),
        (
            "lr = loguniform(1e-4, 1e-2)\ndropout = uniform(0.0, 0.2, when={'lr': 0.001})\n",
            "searched over a range",
        ),
        (
            "loss = choice('ce', 'focal', when={'augment': 'light'})\n"
            "augment = choice('light', 'heavy', when={'loss': 'ce'})\n",
            "conditions form a cycle",
        ),
    ],
)
def test_errors_name_file_line_and_fix(tmp_path, body, expected):
    path = write(tmp_path, "epochs = 3\n" + body)
    message = error_of(path)
    assert expected in message
    assert message.startswith(f"{path}:")
    line = int(message.split(":")[1])
    assert 3 <= line <= 4  # the header is line 1, "epochs = 3" line 2


def test_syntax_error_and_missing_file(tmp_path):
    path = write(tmp_path, "epochs = = 3\n")
    assert error_of(path).startswith(f"{path}:2: syntax error")
    missing = tmp_path / "nope.py"
    assert "does not exist" in error_of(missing)


def test_runtime_error_in_space_file_names_its_line(tmp_path):
    path = write(tmp_path, "epochs = 3\nlr = 1 / 0\n")
    assert error_of(path) == f"{path}:3: ZeroDivisionError: division by zero."


def test_bad_override_is_named(tmp_path):
    path = write(tmp_path, "epochs = 3\n")
    assert "command line 'epochs=...'" in error_of(path, ("epochs=three",))
    assert "is not key=value" in error_of(path, ("epochs",))
    assert "unknown name 'epoch'" in error_of(path, ("epoch=3",))


def test_helpers_and_private_names_are_not_settings(tmp_path):
    path = write(tmp_path, "import math\n_base = 1e-3\ndef helper():\n    return 1\nlr = _base\n")
    assert load_space(path).fixed == {"lr": 1e-3, **TRAINER_SETTINGS}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "dropout = uniform(0.9, 0.1)\n",
            "dropout = uniform(0.9, 0.1): low must be below high; swap them.",
        ),
        (
            "lr = loguniform(0, 1)\n",
            "lr = loguniform(0, 1): low must be above 0 on a log scale; start the range above 0, "
            "or use uniform().",
        ),
        (
            "dropout = uniform(0.2, 0.2)\n",
            "dropout = uniform(0.2, 0.2): low must be below high; widen the range, or assign "
            "one value instead.",
        ),
        (
            "epochs = intrange(1, 9, step=0)\n",
            "epochs = intrange(1, 9, step=0): step must be an integer of at least 1.",
        ),
        (
            "batch_size = choice(\n    16,\n    16,\n)\n",
            "batch_size = choice(16, 16): repeats an option; list each option once.",
        ),
    ],
)
def test_a_bad_distribution_is_named_by_its_parameter(tmp_path, body, expected):
    path = write(tmp_path, "folds = 3\n" + body)
    assert error_of(path) == f"{path}:3: {expected}"


def test_a_searched_metric_is_refused_because_it_sets_the_direction(tmp_path):
    # The study's direction (maximise f1/accuracy, minimise log_loss) comes from the metric:
    # searched, the study would optimise every trial's score in one direction.
    path = write(tmp_path, "epochs = 3\nmetric = choice('log_loss', 'accuracy')\n")
    assert error_of(path) == (
        f"{path}:3: 'metric' cannot be searched: it decides whether the study maximises or "
        "minimises its score, so it is fixed for the whole study; give it one value, e.g. "
        "metric = 'f1_macro'."
    )
    assert load_space(path, ["metric=log_loss"]).settings.metric == "log_loss"


def test_searching_what_a_converged_head_ignores_is_refused(tmp_path):
    path = write(
        tmp_path,
        """
        finetune = "head"
        probe_l2 = loguniform(0.05, 5.0)
        lr = loguniform(1e-4, 1e-2)
        """,
    )
    message = error_of(path)
    assert f"{path}:5: lr is searched" in message and "does not act" in message
    assert "fix it to one value or remove it" in message


def test_what_acts_on_head_trials_may_be_searched(tmp_path):
    head = write(
        tmp_path,
        """
        finetune = "head"
        lr = 0.01
        probe_l2 = loguniform(0.05, 5.0)
        augment = choice("none", "light")
        feature_views = choice(2, 4)
        """,
    )
    assert set(load_space(head).searched) == {"probe_l2", "augment", "feature_views"}
    mixed = write(
        tmp_path,
        """
        finetune = choice("full", "head", "probe_full")
        lr = loguniform(1e-4, 1e-2, when={"finetune": ["full", "probe_full"]})
        dropout = uniform(0.0, 0.3)
        """,
        name="mixed.py",
    )
    assert set(load_space(mixed).searched) == {"finetune", "lr", "dropout"}


def test_weight_decay_is_refused_for_head_trials_whose_penalty_is_probe_l2(tmp_path):
    path = write(
        tmp_path,
        """
        finetune = "head"
        weight_decay = loguniform(1e-5, 1e-1)
        """,
    )
    message = error_of(path)
    assert "weight_decay is searched" in message and "probe_l2" in message


def test_a_parameter_only_for_trained_backbones_may_stay_with_finetune_head(tmp_path):
    # A study that fixes finetune="head" in a space written for several modes keeps its file.
    path = write(
        tmp_path,
        """
        finetune = "head"
        lr = loguniform(1e-4, 1e-2, when={"finetune": ("full", "probe_full")})
        probe_l2 = loguniform(0.05, 5.0)
        """,
    )
    assert set(load_space(path).searched) == {"lr", "probe_l2"}

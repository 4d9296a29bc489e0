"""Samplers: seeded, Halton start-up, no repeats between processes, diverged trials told as bad."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.keys import DIVERGED
from search.space import choice, loguniform
from search.space.settings import SAMPLERS
from search.study.samplers import (
    Staged,
    TellView,
    build_sampler,
    halton_point,
    is_near_copy,
    near_copies,
)

SPACE = {"lr": loguniform(1e-4, 1e-1), "loss": choice("ce", "focal")}
DISTRIBUTIONS = {name: s.distribution for name, s in SPACE.items()}


def sample(study: optuna.Study, n: int) -> list[dict]:
    params = []
    for _ in range(n):
        trial = study.ask()
        params.append({name: s.suggest(trial, name) for name, s in SPACE.items()})
        study.tell(trial, params[-1]["lr"])
    return params


def study_with(name: str, *, process_seed: int, storage=None) -> optuna.Study:
    sampler = build_sampler(
        name, seed=7, process_seed=process_seed, grouped=False, space=DISTRIBUTIONS
    )
    return optuna.create_study(
        study_name="s", storage=storage, sampler=sampler, load_if_exists=True
    )


@pytest.mark.parametrize("name", SAMPLERS)
def test_a_lone_process_repeats_exactly(name):
    first = sample(study_with(name, process_seed=7), 12)
    second = sample(study_with(name, process_seed=7), 12)
    assert first == second


def test_two_processes_on_one_study_do_not_repeat_each_other(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    a = study_with("tpe", process_seed=1, storage=storage)
    b = study_with("tpe", process_seed=1, storage=storage)  # two lone processes: same seed
    seen = []
    for _ in range(7):  # interleaved, as two workers would ask: Halton, then TPE
        seen += sample(a, 1) + sample(b, 1)
    assert len({p["lr"] for p in seen}) == len(seen)


def test_start_up_trials_cover_the_space_evenly():
    params = sample(study_with("tpe", process_seed=7), 8)
    eighths = {int(8 * math.log(p["lr"] / 1e-4) / math.log(1e3)) for p in params}
    # Scrambled Halton puts its first 8 points in 8 different eighths of each range; random
    # points do so with probability 8!/8**8 = 0.002.
    assert len(eighths) == 8


def _finished(study, lr: float, *, value=None, step=None, diverged=False) -> None:
    state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
    study.add_trial(
        create_trial(
            state=state,
            value=value,
            params={"lr": lr},
            distributions={"lr": DISTRIBUTIONS["lr"]},
            intermediate_values={} if step is None else {step: 0.5},
            user_attrs={DIVERGED: True} if diverged else {},
        )
    )


def _suggested_lrs(sampler: optuna.samplers.BaseSampler, n: int) -> list[float]:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    _finished(study, 1e-4, value=0.9)
    for lr in (1.2e-4, 1.5e-4, 2e-4):
        _finished(study, lr, step=0)  # pruned at the first rung
    for lr in (0.05, 0.06, 0.07, 0.08, 0.09, 0.1) * 3:
        _finished(study, lr, step=5, diverged=True)  # diverged late, at rung 5
    lrs = []
    for _ in range(n):
        trial = study.ask()
        lrs.append(trial.suggest_float("lr", 1e-4, 1e-1, log=True))
        study.tell(trial, state=TrialState.FAIL)  # keep the history as built
    return lrs


class _Told(optuna.samplers.BaseSampler):
    """TPE that sees the study through `TellView` (what `Staged` hands its inner sampler)."""

    def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
        self.inner = inner

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(TellView(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(TellView(study), trial, search_space)

    def sample_independent(self, study, trial, name, dist):
        return self.inner.sample_independent(TellView(study), trial, name, dist)


def test_diverged_trials_are_told_to_tpe_as_the_worst_not_as_far_pruned():
    tpe = {"seed": 0, "multivariate": True, "n_startup_trials": 1}
    told = _suggested_lrs(_Told(optuna.samplers.TPESampler(**tpe)), 20)
    assert statistics.median(told) < 1e-2
    # Plain TPE ranks a trial pruned at rung 5 above one pruned at rung 0: it follows them.
    plain = _suggested_lrs(optuna.samplers.TPESampler(**tpe), 20)
    assert statistics.median(plain) > 1e-2


def _trial(number: int, lr: float, loss: str) -> optuna.trial.FrozenTrial:
    trial = create_trial(
        value=0.0,
        params={"lr": lr, "loss": loss},
        distributions={
            "lr": FloatDistribution(1e-4, 1e-1, log=True),
            "loss": CategoricalDistribution(("ce", "focal")),
        },
    )
    trial.number = number
    return trial


def test_near_copies_have_the_same_choices_and_numbers_within_a_tenth_of_their_scale():
    a, b = _trial(0, 1e-3, "ce"), _trial(1, 1.9e-3, "ce")  # log10 distance 0.28 of 3: 0.09
    assert is_near_copy(a, b)
    assert not is_near_copy(a, _trial(2, 1.9e-3, "focal"))
    assert not is_near_copy(a, _trial(3, 3e-3, "ce"))  # 0.16 of the range
    assert near_copies([a, b, _trial(2, 1.9e-3, "focal"), _trial(4, 1.1e-3, "ce")]) == [1, 4]


WIDE = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "wd": FloatDistribution(1e-5, 1e-1, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "loss": CategoricalDistribution(("ce", "focal")),
}


def _exploit(sampler: optuna.samplers.BaseSampler) -> list[int]:
    """Near-copies among 30 trials of a study with one sharp optimum."""
    return near_copies(_exploit_study(sampler, 30).trials)


def _exploit_study(
    sampler: optuna.samplers.BaseSampler, n: int, study: optuna.Study | None = None
) -> optuna.Study:
    """``n`` trials of a study over `WIDE` with one sharp optimum."""
    study = study or optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(n):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        wd = trial.suggest_float("wd", 1e-5, 1e-1, log=True)
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        trial.suggest_categorical("loss", ("ce", "focal"))
        loss = abs(math.log10(lr / 3e-3)) + 0.3 * abs(math.log10(wd / 1e-3)) + abs(dropout - 0.1)
        study.tell(trial, -loss)
    return study


def test_the_model_based_sampler_does_not_propose_near_copies_of_tried_configs():
    plain, staged = 0, 0
    for seed in (1, 2, 3):
        tpe = {"seed": seed, "multivariate": True, "n_startup_trials": 10}
        plain += len(_exploit(optuna.samplers.TPESampler(**tpe)))
        inner = optuna.samplers.TPESampler(**tpe)
        staged += len(_exploit(Staged(inner, space=WIDE, seed=seed, startup=10)))
    assert plain >= 5  # TPE alone exploits its best point by proposing copies of it
    assert staged == 0


class _Recording(optuna.samplers.BaseSampler):
    """A model-based sampler stand-in: TPE, noting the trials it was asked to sample."""

    def __init__(self) -> None:
        self.inner = optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=1)
        self.asked: set[int] = set()

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        self.asked.add(trial.number)
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, name, dist):
        return self.inner.sample_independent(study, trial, name, dist)


def test_after_the_start_up_one_trial_in_three_continues_the_halton_sequence():
    model = _Recording()
    sampler = Staged(model, space=WIDE, seed=7, startup=10)
    params = [t.params for t in _exploit_study(sampler, 31).trials]
    exploring = [n for n in range(31) if n < 10 or n % 3 == 2]
    assert sorted(model.asked) == [n for n in range(31) if n not in exploring]
    # The exploring trials take the Halton sequence's points in order, continued where the
    # start-up ended (after it, a point that is a near-copy of a tried config is not trained).
    halton = [halton_point(sampler.halton.space, seed=7, index=i) for i in range(len(exploring))]
    taken = [params[n] == point for n, point in zip(exploring, halton, strict=True)]
    assert all(taken[:10]) and sum(taken) >= len(taken) - 2


@pytest.mark.parametrize("every", [2, 3, 5, None])
def test_each_exploring_trial_has_its_own_halton_point_whoever_asks(every):
    # The index follows from the trial number alone: no counter in the storage that two
    # workers could read at the same moment.
    sampler = Staged(optuna.samplers.RandomSampler(), space=WIDE, seed=7, explore_every=every)
    indices = [sampler.halton_index(n) for n in range(300) if sampler.explores(n)]
    assert indices == list(range(len(indices)))
    assert len(indices) == 10 if every is None else len(indices) > 10 + 290 // (every + 1)

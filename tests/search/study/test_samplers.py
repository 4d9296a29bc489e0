"""Samplers: seeded, and processes sharing a study never propose the same start-up trial."""

from __future__ import annotations

import optuna
import pytest

from search.space import choice, loguniform
from search.space.settings import SAMPLERS
from search.study.samplers import build_sampler

SPACE = {"lr": loguniform(1e-4, 1e-1), "loss": choice("ce", "focal")}


def sample(study: optuna.Study, n: int) -> list[dict]:
    params = []
    for _ in range(n):
        trial = study.ask()
        params.append({name: s.suggest(trial, name) for name, s in SPACE.items()})
        study.tell(trial, params[-1]["lr"])
    return params


def study_with(name: str, *, process_seed: int, storage=None) -> optuna.Study:
    sampler = build_sampler(name, seed=7, process_seed=process_seed, grouped=False)
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
    for _ in range(6):  # interleaved, as two workers would ask
        seen += sample(a, 1) + sample(b, 1)
    assert len({p["lr"] for p in seen}) == len(seen)

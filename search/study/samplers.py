"""The study's sampler: the one the space names, with start-up trials seeded per trial number.

Random start-up trials drawn from one seeded generator repeat each other in every process that
shares the study (two `hpo run` of the same study propose identical parameters). Here each
start-up trial's values come from a generator seeded by (study seed, trial number), which is
unique across processes and machines and still repeatable for a lone process.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

STARTUP_TRIALS = 10


class SeededStartup(BaseSampler):
    """Per-trial seeded random sampling for the first ``startup`` trials, then ``inner``.

    Args:
        inner: The sampler that takes over after the start-up trials.
        seed: The study's seed.
        startup: Finished trials before ``inner`` takes over (None: never, i.e. random search).
    """

    def __init__(self, inner: BaseSampler | None, *, seed: int, startup: int | None) -> None:
        self.inner, self.seed, self.startup = inner, seed, startup

    def _starting(self, study: optuna.Study) -> bool:
        if self.inner is None or self.startup is None:
            return True
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        return len(study.get_trials(deepcopy=False, states=states)) < self.startup

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._starting(study):
            return {}
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if not self._starting(study):
            return self.inner.sample_independent(study, trial, param_name, param_distribution)
        key = f"{self.seed}:{trial.number}:{param_name}".encode()
        draw = RandomSampler(seed=zlib.crc32(key))
        return draw.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.inner is not None:
            self.inner.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if self.inner is not None:
            self.inner.after_trial(study, trial, state, values)


def build_sampler(name: str, *, seed: int, process_seed: int, grouped: bool) -> BaseSampler:
    """The sampler named by a space's ``sampler`` setting, seeded.

    Args:
        name: One of `SAMPLERS`.
        seed: The study's seed (start-up trials, QMC's sequence).
        process_seed: The seed of this process's model-based sampler (distinct per worker).
        grouped: Whether the space has conditional parameters (TPE then samples by group).
    """
    if name == "random":
        return SeededStartup(None, seed=seed, startup=None)
    if name == "qmc":
        # QMC numbers its points by trial already, so parallel workers never repeat each other.
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    inner: BaseSampler
    if name == "cmaes":
        inner = optuna.samplers.CmaEsSampler(seed=process_seed, warn_independent_sampling=False)
    elif name == "gp":
        inner = optuna.samplers.GPSampler(seed=process_seed, warn_independent_sampling=False)
    else:
        inner = optuna.samplers.TPESampler(
            seed=process_seed,
            multivariate=True,
            group=grouped,
            constant_liar=True,
            n_startup_trials=STARTUP_TRIALS,
        )
    return SeededStartup(inner, seed=seed, startup=STARTUP_TRIALS)

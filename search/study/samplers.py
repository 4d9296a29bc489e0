"""The study's sampler: scrambled Halton for the start-up trials, then the model-based one.

- Start-up trials follow Optuna's `QMCSampler` (shifted, scrambled Halton, as the Deep Learning
  Tuning Playbook recommends for exploration) over the whole space, conditional parameters
  included, so that they cover it evenly. The sequence is seeded by the study's seed and indexed
  through the study's storage, so processes sharing a study take different points.
- Then TPE (multivariate, grouped when the space has conditions) with ``constant_liar=True``:
  running trials count as bad, so parallel workers do not propose the same point.
- The model-based sampler sees the study through `TellView`: a trial pruned because its loss or
  score diverged is shown without intermediate values, which TPE ranks below every other
  pruned trial, instead of by the rung it had reached. A proposal that is a near-copy of a
  trial the study already has (same choices, every number within a tenth of its range) is
  proposed again; after a few near-copies in a row the trial explores a random point instead:
  re-training a near-copy teaches the study little.
- ``random`` draws each trial from a generator seeded by (study seed, trial number), unique
  across processes and still repeatable for a lone process.

Pruned trials report at rungs whose step means the same in every trial (see
`search.study.pruning`), so TPE's order for them, (rung reached, value at that rung), compares
like with like.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Container, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, QMCSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from search.keys import DIVERGED

STARTUP_TRIALS = 10
_RETRIES = 4  # proposals of the model-based sampler before a near-copy is accepted
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _told(trial: FrozenTrial) -> FrozenTrial:
    """``trial`` as the model-based sampler is told it (see `TellView`)."""
    if not trial.user_attrs.get(DIVERGED):
        return trial
    view = copy.copy(trial)
    view.intermediate_values = {}
    return view


class TellView:
    """The study as the model-based sampler sees it: diverged trials carry no rung values."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [_told(t) for t in trials]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return [_told(t) for t in self._study.get_trials(deepcopy=deepcopy, states=states)]


def _random_value(seed: int, trial: FrozenTrial, name: str, dist: BaseDistribution) -> Any:
    """A random value for one parameter, seeded by (study seed, trial number, name)."""
    draw = RandomSampler(seed=zlib.crc32(f"{seed}:{trial.number}:{name}".encode()))
    return draw.sample_independent(None, trial, name, dist)  # type: ignore[arg-type]


class PerTrialRandom(BaseSampler):
    """Random search whose every trial has its own seed (see the module docstring)."""

    def __init__(self, *, seed: int) -> None:
        self.seed = seed

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, dist: BaseDistribution
    ) -> Any:
        return _random_value(self.seed, trial, name, dist)


class Staged(BaseSampler):
    """Scrambled Halton over ``space`` for the first ``startup`` finished trials, then ``inner``.

    Args:
        inner: The model-based sampler; it sees the study through `TellView`.
        space: Every searched parameter's distribution (conditional ones included).
        seed: The study's seed (the Halton sequence's scrambling).
        startup: Finished trials (complete or pruned) before ``inner`` takes over.
    """

    def __init__(
        self,
        inner: BaseSampler,
        *,
        space: Mapping[str, BaseDistribution],
        seed: int,
        startup: int = STARTUP_TRIALS,
    ) -> None:
        self.inner, self.space, self.seed, self.startup = inner, dict(space), seed, startup
        self.qmc = QMCSampler(
            qmc_type="halton", scramble=True, seed=seed, warn_independent_sampling=False
        )
        # Decided once per trial, in before_trial: another worker finishing a trial between
        # two calls for the same trial must not switch it from one sampler to the other.
        self._exploring: dict[int, bool] = {}

    def _explores(self, trial: FrozenTrial) -> bool:
        return self._exploring.get(trial.number, False)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        finished = len(study._get_trials(deepcopy=False, states=_FINISHED))
        self._exploring[trial.number] = finished < self.startup
        if not self._explores(trial):
            self.inner.before_trial(TellView(study), trial)  # type: ignore[arg-type]

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._explores(trial):
            return {k: d for k, d in self.space.items() if not d.single()}
        return self.inner.infer_relative_search_space(TellView(study), trial)  # type: ignore[arg-type]

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        if self._explores(trial):
            return self.qmc.sample_relative(study, trial, search_space)
        view: Any = TellView(study)
        others = [
            t for t in study._get_trials(deepcopy=False) if t.params and t.number != trial.number
        ]
        for _ in range(_RETRIES):
            params = self.inner.sample_relative(view, trial, search_space)
            # Re-training a near-copy of a tried config teaches little; propose again.
            if not any(_close(params, t.params, t.distributions, 0.1) for t in others):
                return params
        # The model keeps to the same spot: explore instead.
        return {name: _random_value(self.seed, trial, name, d) for name, d in search_space.items()}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, dist: BaseDistribution
    ) -> Any:
        if self._explores(trial):
            return _random_value(self.seed, trial, name, dist)
        return self.inner.sample_independent(TellView(study), trial, name, dist)  # type: ignore[arg-type]

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if not self._exploring.pop(trial.number, False):
            self.inner.after_trial(study, trial, state, values)


def build_sampler(
    name: str,
    *,
    seed: int,
    process_seed: int,
    grouped: bool,
    space: Mapping[str, BaseDistribution],
) -> BaseSampler:
    """The sampler named by a space's ``sampler`` setting, seeded.

    Args:
        name: One of `search.space.settings.SAMPLERS`.
        seed: The study's seed (start-up trials, QMC's sequence).
        process_seed: The seed of this process's model-based sampler (distinct per worker).
        grouped: Whether the space has conditional parameters (TPE then samples by group).
        space: Every searched parameter's distribution.
    """
    if name == "random":
        return PerTrialRandom(seed=seed)
    if name == "qmc":
        # QMC numbers its points through the storage, so parallel workers do not repeat.
        return QMCSampler(
            qmc_type="halton", scramble=True, seed=seed, warn_independent_sampling=False
        )
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
    return Staged(inner, space=space, seed=seed)


# --- how often a sampler repeats itself -----------------------------------------------------------


def _position(dist: BaseDistribution, value: Any) -> float | None:
    """Where ``value`` lies in ``dist``'s range, 0..1 (log scale for log ranges); None: a choice."""
    if isinstance(dist, CategoricalDistribution):
        return None
    assert isinstance(dist, FloatDistribution | IntDistribution)
    low, high, x = float(dist.low), float(dist.high), float(value)
    if dist.log:
        low, high, x = math.log(low), math.log(high), math.log(x)
    return 0.0 if high == low else (x - low) / (high - low)


def _close(
    mine: Mapping[str, Any],
    theirs: Mapping[str, Any],
    distributions: Mapping[str, BaseDistribution],
    tolerance: float,
) -> bool:
    """Every parameter of ``theirs`` is in ``mine``, the same choice or a number near it."""
    for name, value in theirs.items():
        if name not in mine:
            return False
        here = _position(distributions[name], mine[name])
        there = _position(distributions[name], value)
        if here is None and mine[name] != value:
            return False
        if here is not None and there is not None and abs(here - there) > tolerance:
            return False
    return True


def is_near_copy(a: FrozenTrial, b: FrozenTrial, *, tolerance: float = 0.1) -> bool:
    """Same parameters, same choices, and every number within ``tolerance`` of its range."""
    return a.params.keys() == b.params.keys() and _close(
        a.params, b.params, a.distributions, tolerance
    )


def near_copies(trials: Sequence[FrozenTrial], *, tolerance: float = 0.1) -> list[int]:
    """Numbers of the trials that are near-copies (`is_near_copy`) of an earlier trial."""
    ordered = sorted((t for t in trials if t.params), key=lambda t: t.number)
    return [
        t.number
        for i, t in enumerate(ordered)
        if any(is_near_copy(t, earlier, tolerance=tolerance) for earlier in ordered[:i])
    ]

"""The study's sampler: random by default; or scrambled Halton start-up, then a model.

The default, ``random``, was chosen on recorded learning curves (docs/benchmarks.md, "The
choice"): with hpo's pruning, random proposals reached random search's best at 3x the budget
sooner than the model-based sampler below on the worse of two tasks. It draws each trial
from a generator seeded by (study seed, trial number), unique across processes and still
repeatable for a lone process. The model-based samplers (``tpe``, ``cmaes``, ``gp``):

- Start-up trials take points of a scrambled Halton sequence (as the Deep Learning Tuning
  Playbook recommends for exploration) over the whole space, conditional parameters included,
  so that they cover it evenly. The sequence is seeded by the study's seed, and trial ``n``
  takes a point whose index is a function of ``n`` alone (`Halton`): processes sharing a
  study never take the same point. (Optuna's `QMCSampler` counts its points in the storage,
  and two workers that read the counter at the same moment take the same point.)
- Then TPE (multivariate, grouped when the space has conditions) with ``constant_liar=True``:
  running trials count as bad, so parallel workers do not propose the same point.
- After the start-up, one trial in `EXPLORE_EVERY` still takes the next Halton point, as BOHB
  samples a fixed fraction of its configurations at random. A model fitted to a few noisy
  trials can settle on the first good region it saw (a fast-learning backbone, say) and never
  propose the region that ends better; the interleaved points keep probing the whole space,
  and one that beats the model's region becomes the model's new lead.
- The model-based sampler sees the study through `TellView`: a trial pruned because its loss or
  score diverged is shown without intermediate values, which TPE ranks below every other
  pruned trial, instead of by the rung it had reached.
- After the start-up, a proposal that is a near-copy of a trial the study already has (same
  choices, every number within a tenth of its range) is not trained: the model proposes
  again, and after a few near-copies in a row (or at once, for a Halton point) the trial takes
  a random point instead. Re-training a near-copy teaches the study little.

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
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from search.keys import DIVERGED

STARTUP_TRIALS = 10
EXPLORE_EVERY = 3  # after the start-up, trials numbered 2, 5, 8, ... (mod 3) explore
_RETRIES = 4  # proposals of the model-based sampler before a random point is taken instead


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


def halton_point(space: Mapping[str, BaseDistribution], *, seed: int, index: int) -> dict[str, Any]:
    """Point ``index`` (from 0) of the scrambled Halton sequence over ``space``, seeded.

    One coordinate per parameter, in ``space``'s order; a coordinate ``u`` in [0, 1) becomes
    the value at that share of the range (of its logarithm for a log range), a choice the
    ``floor(u * choices)``-th one.
    """
    from scipy.stats import qmc  # here: scipy.stats takes a second to import (hpo status)

    engine = qmc.Halton(len(space), scramble=True, rng=seed)
    if index:
        engine.fast_forward(index)
    unit = engine.random(1)[0]
    return {
        name: _from_unit(dist, float(u))
        for (name, dist), u in zip(space.items(), unit, strict=True)
    }


def _from_unit(dist: BaseDistribution, u: float) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    assert isinstance(dist, FloatDistribution | IntDistribution)
    low, high = float(dist.low), float(dist.high)
    if isinstance(dist, IntDistribution) and not dist.log:
        count = (dist.high - dist.low) // dist.step + 1  # every value an equal share
        return dist.low + min(int(u * count), count - 1) * dist.step
    if dist.log:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    if isinstance(dist, IntDistribution):
        return min(max(round(value), dist.low), dist.high)
    if dist.step is not None:
        value = low + round((value - low) / dist.step) * dist.step
    return min(max(value, low), high)


class Halton(BaseSampler):
    """Scrambled Halton over ``space``; trial ``n`` takes the point of index ``n``.

    Args:
        space: Every searched parameter's distribution (conditional ones included; a
            parameter a trial does not reach simply goes unused).
        seed: The sequence's scrambling.
    """

    def __init__(self, *, space: Mapping[str, BaseDistribution], seed: int) -> None:
        self.space = {k: d for k, d in space.items() if not d.single()}
        self.seed = seed

    def point(self, index: int) -> dict[str, Any]:
        """The sequence's point ``index``."""
        return halton_point(self.space, seed=self.seed, index=index)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self.space)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.point(trial.number) if search_space else {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, dist: BaseDistribution
    ) -> Any:
        return _random_value(self.seed, trial, name, dist)


class Staged(BaseSampler):
    """Scrambled Halton for the first ``startup`` trials, then ``inner``, with Halton interleaved.

    After the start-up, trials whose number is ``explore_every - 1`` modulo ``explore_every``
    take the next Halton point (see the module docstring). Which trials explore, and which
    point each takes, follow from the trial number alone: workers sharing a study agree on
    both without asking each other.

    Args:
        inner: The model-based sampler; it sees the study through `TellView`.
        space: Every searched parameter's distribution (conditional ones included).
        seed: The study's seed (the Halton sequence's scrambling).
        startup: Trials (numbers 0 to ``startup - 1``) that explore before ``inner`` is asked.
        explore_every: One trial in this many explores after the start-up; None: none does.
    """

    def __init__(
        self,
        inner: BaseSampler,
        *,
        space: Mapping[str, BaseDistribution],
        seed: int,
        startup: int = STARTUP_TRIALS,
        explore_every: int | None = EXPLORE_EVERY,
    ) -> None:
        self.inner, self.seed, self.startup = inner, seed, startup
        self.explore_every = explore_every
        self.halton = Halton(space=space, seed=seed)

    def explores(self, number: int) -> bool:
        """Whether trial ``number`` takes a Halton point (start-up or interleaved)."""
        every = self.explore_every
        return number < self.startup or (every is not None and number % every == every - 1)

    def halton_index(self, number: int) -> int:
        """The Halton index of exploring trial ``number``: how many explore before it."""
        if number <= self.startup or self.explore_every is None:
            return min(number, self.startup)
        every = self.explore_every  # numbers below n that are every - 1 modulo every: n // every
        return self.startup + number // every - self.startup // every

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self.explores(trial.number):
            self.inner.before_trial(TellView(study), trial)  # type: ignore[arg-type]

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self.explores(trial.number):
            return self.halton.infer_relative_search_space(study, trial)
        return self.inner.infer_relative_search_space(TellView(study), trial)  # type: ignore[arg-type]

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        if trial.number < self.startup:  # spread evenly by construction
            return self.halton.point(self.halton_index(trial.number))
        others = [
            t for t in study._get_trials(deepcopy=False) if t.params and t.number != trial.number
        ]
        if self.explores(trial.number):
            proposals = [self.halton.point(self.halton_index(trial.number))]
        else:
            view: Any = TellView(study)
            proposals = (
                self.inner.sample_relative(view, trial, search_space) for _ in range(_RETRIES)
            )
        for params in proposals:
            # Re-training a near-copy of a tried config teaches little.
            if not any(_close(params, t.params, t.distributions, 0.1) for t in others):
                return params
        return {name: _random_value(self.seed, trial, name, d) for name, d in search_space.items()}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, dist: BaseDistribution
    ) -> Any:
        if self.explores(trial.number):
            return _random_value(self.seed, trial, name, dist)
        return self.inner.sample_independent(TellView(study), trial, name, dist)  # type: ignore[arg-type]

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if not self.explores(trial.number):
            self.inner.after_trial(study, trial, state, values)


def build_sampler(
    name: str,
    *,
    seed: int,
    process_seed: int,
    grouped: bool,
    space: Mapping[str, BaseDistribution],
    startup: int = STARTUP_TRIALS,
    explore_every: int | None = EXPLORE_EVERY,
) -> BaseSampler:
    """The sampler named by a space's ``sampler`` setting, seeded.

    Args:
        name: One of `search.space.settings.SAMPLERS`.
        seed: The study's seed (start-up trials, QMC's sequence).
        process_seed: The seed of this process's model-based sampler (distinct per worker).
        grouped: Whether the space has conditional parameters (TPE then samples by group).
        space: Every searched parameter's distribution.
        startup, explore_every: The model-based samplers' Halton start-up and mix (`Staged`).
    """
    if name == "random":
        return PerTrialRandom(seed=seed)
    if name == "qmc":
        return Halton(space=space, seed=seed)  # indexed by trial number: workers never repeat
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
            n_startup_trials=startup,
        )
    return Staged(inner, space=space, seed=seed, startup=startup, explore_every=explore_every)


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

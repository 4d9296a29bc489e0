"""The study's plots: optimisation history, parameter importances, slices, parallel coordinates.

Drawn for the study run in MLflow and into the export folder, which the export's report.md links.
The export sits below tracking, so it never imports this module: `hpo run` and `hpo export`
hand it `study_figures` (see `search.export.build.DrawPlots`).
Figures are `matplotlib.figure.Figure` objects rather than pyplot figures, so drawing never
changes the process's plotting backend or leaves figures open; matplotlib is imported only when
a figure is drawn. Drawing is pure (no MLflow call, no file written).
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search import keys
from search.keys import FOLD_SCORES

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def history_figure(trials: Sequence[FrozenTrial], *, metric: str, maximize: bool) -> Figure:
    """Each trial's value by trial number, the best so far, and pruned trials' partial means."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.user_attrs.get(FOLD_SCORES)]
    if pruned:
        xs = [t.number for t in pruned]
        ys = [statistics.fmean(t.user_attrs[FOLD_SCORES]) for t in pruned]
        ax.scatter(xs, ys, marker="x", color="0.6", label="pruned (mean of trained folds)")
    if done:
        values = [t.value for t in done]
        best = np.maximum.accumulate(values) if maximize else np.minimum.accumulate(values)
        ax.scatter([t.number for t in done], values, color="tab:blue", label="complete")
        ax.step([t.number for t in done], best, where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} (mean over folds)")
    ax.set_title(f"Optimisation history ({'maximised' if maximize else 'minimised'})")
    if done or pruned:
        ax.legend(loc="best")
    return fig


def importance_figure(study: optuna.Study) -> Figure | None:
    """Optuna's parameter importances as bars; None until they can be computed."""
    import optuna
    from matplotlib.figure import Figure

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "too few trials": the plot says what it can
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # e.g. no parameter varies yet
        return None
    if not importances:
        return None
    names = list(importances)[::-1]
    fig = Figure(figsize=(7, 1.2 + 0.4 * len(names)), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (Optuna's default evaluator)")
    ax.set_title(f"Parameter importances ({len(complete)} complete trials)")
    return fig


def safe_figure(build: Callable[..., Figure | None], *args: Any, **kwargs: Any) -> Figure | None:
    """``build(...)``, or None if drawing failed (a missing plot must not stop a study)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build(*args, **kwargs)
    except Exception:
        return None


# Parameters drawn at most in a slice plot (one panel each) and on a parallel-coordinate plot.
_MAX_PARAMS = 12


def _complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]


def _searched(trials: Sequence[FrozenTrial]) -> list[str]:
    """Parameters that took more than one value in ``trials`` (a fixed one explains nothing)."""
    names = sorted({name for t in trials for name in t.params})
    varied = [n for n in names if len({repr(t.params.get(n)) for t in trials}) > 1]
    return varied[:_MAX_PARAMS]


def _distribution(trials: Sequence[FrozenTrial], name: str) -> BaseDistribution | None:
    return next((t.distributions[name] for t in trials if name in t.distributions), None)


def _position(distribution: BaseDistribution | None, value: Any) -> float:
    """Where ``value`` sits on its axis: its index for a choice, else the value (log: log10)."""
    if isinstance(distribution, CategoricalDistribution):
        return float(distribution.to_internal_repr(value))
    if getattr(distribution, "log", False):
        return float(np.log10(value))
    return float(value)


def _choice_ticks(ax: Axes, distribution: BaseDistribution | None, *, axis: str) -> None:
    if isinstance(distribution, CategoricalDistribution):
        names = [str(c)[:16] for c in distribution.choices]
        ticks = range(len(names))
        if axis == "x":
            ax.set_xticks(ticks, names, rotation=30, ha="right", fontsize=7)
        else:
            ax.set_yticks(ticks, names, fontsize=7)


def slice_figure(trials: Sequence[FrozenTrial], *, metric: str) -> Figure | None:
    """One panel per searched parameter: each complete trial's value against that parameter.

    Colour is the trial number (light early, dark late), so a drift of the sampler shows. None
    until two complete trials differ in a parameter.
    """
    from matplotlib.figure import Figure

    done = _complete(trials)
    names = _searched(done)
    if len(done) < 2 or not names:
        return None
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    order = [t.number for t in done]
    for ax, name in zip(axes, names, strict=False):
        dist = _distribution(done, name)
        have = [t for t in done if name in t.params]
        xs = [t.params[name] for t in have]
        if isinstance(dist, CategoricalDistribution):
            xs = [dist.to_internal_repr(x) for x in xs]
        ax.scatter(
            xs,
            [t.value for t in have],
            c=[t.number for t in have],
            cmap="viridis_r",
            vmin=min(order),
            vmax=max(order),
            s=18,
        )
        if getattr(dist, "log", False):
            ax.set_xscale("log")
        _choice_ticks(ax, dist, axis="x")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(f"{metric} of {len(done)} complete trials by parameter (colour: trial number)")
    return fig


def parallel_figure(trials: Sequence[FrozenTrial], *, metric: str, maximize: bool) -> Figure | None:
    """Parallel coordinates: one vertical axis per searched parameter, then the value.

    Each complete trial is a line; better trials are darker and drawn on top, the best in red.
    Each axis spans its parameter's range (log scale for a log distribution; choices by index).
    """
    from matplotlib.figure import Figure

    done = _complete(trials)
    names = _searched(done)
    if len(done) < 2 or not names:
        return None
    done.sort(key=lambda t: t.value, reverse=not maximize)  # worst first: the best on top
    dists = [_distribution(done, n) for n in names]
    columns = []
    for name, dist in zip(names, dists, strict=True):
        column = [_position(dist, t.params[name]) if name in t.params else np.nan for t in done]
        columns.append(np.asarray(column, dtype=float))
    columns.append(np.asarray([t.value for t in done], dtype=float))
    spans = [(np.nanmin(c), np.nanmax(c)) for c in columns]
    scaled = np.stack(
        [
            (c - lo) / (hi - lo) if hi > lo else np.full_like(c, 0.5)
            for c, (lo, hi) in zip(columns, spans, strict=True)
        ],
        axis=1,
    )
    fig = Figure(figsize=(1.3 * len(columns) + 2, 4.5), layout="constrained")
    ax = fig.subplots()
    shade = np.linspace(0.85, 0.15, len(done))
    xs = np.arange(len(columns))
    for row, grey in zip(scaled[:-1], shade[:-1], strict=True):
        ax.plot(xs, row, color=str(grey), linewidth=0.8)
    ax.plot(xs, scaled[-1], color="tab:red", linewidth=2, label=f"best (trial {done[-1].number})")
    for x, (lo, hi), dist in zip(xs, spans, [*dists, None], strict=True):
        ax.axvline(x, color="0.3", linewidth=0.6)
        if isinstance(dist, CategoricalDistribution):
            for index, choice in enumerate(dist.choices):
                if lo <= index <= hi:
                    y = (index - lo) / (hi - lo) if hi > lo else 0.5
                    ax.text(x + 0.04, y, str(choice)[:14], fontsize=6, va="center")
            continue
        low, high = (10**lo, 10**hi) if getattr(dist, "log", False) else (lo, hi)
        ax.text(x + 0.04, 0, f"{low:.3g}", fontsize=6, va="bottom")
        ax.text(x + 0.04, 1, f"{high:.3g}", fontsize=6, va="top")
    ax.set_xticks(xs, [*names, metric], rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(columns) - 0.6)
    best = f"red: the best, trial {done[-1].number}"
    ax.set_title(f"Parallel coordinates of {len(done)} complete trials (darker: better; {best})")
    return fig


def study_figures(
    study: optuna.Study, trials: Sequence[FrozenTrial], *, metric: str
) -> dict[str, Figure | None]:
    """Every study plot by its artifact name; None where a plot cannot be drawn yet."""
    maximize = study.direction.name == "MAXIMIZE"
    return {
        keys.HISTORY_ARTIFACT: safe_figure(
            history_figure, trials, metric=metric, maximize=maximize
        ),
        keys.IMPORTANCE_ARTIFACT: safe_figure(importance_figure, study),
        keys.SLICE_ARTIFACT: safe_figure(slice_figure, trials, metric=metric),
        keys.PARALLEL_ARTIFACT: safe_figure(
            parallel_figure, trials, metric=metric, maximize=maximize
        ),
    }

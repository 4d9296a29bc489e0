"""Search methods replayed on recorded learning curves: many seeds in minutes, with intervals.

Each task's table (``bench/curves/<task>.parquet``, see bench/curves/record.py) holds every
fold at every epoch of a few hundred configurations and each one's clean holdout score. A
replay runs hpo's real sampler, pruner, stopping rule and trial loop (`hpo run`'s objective,
the trainer replaced by look-ups: bench/replay_table.py) on in-memory storage; a sampled
configuration gets the curves of the nearest recorded one.

Methods, at equal compute (epochs trained, pruned trials' epochs included):

- ``hpo``: hpo's defaults for the space (random proposals from 2026-12-07 on, Halton start-up
  then TPE with Halton points mixed in before; the rung median, then the fold rule);
- ``random``: random search, no pruning; ``tpe``: hpo's ``sampler=tpe`` (Halton start-up,
  then TPE with Halton points mixed in), no pruning;
- ``sha``, ``hyperband``: Optuna's SuccessiveHalvingPruner and HyperbandPruner (reduction
  factor 3, minimum resource a ninth of the schedule, so that SHA's rungs sit at a ninth and a
  third of it) on one step axis: the epochs the trial has trained over all its folds, the
  value there the mean of its folds' best scores so far (the fold under way counted by its
  best epoch yet); hpo's ``sampler=tpe``;
- ``wilcoxon``: hpo's ``pruner=wilcoxon`` (Optuna's WilcoxonPruner across folds);
- ``forgiving``: Bergman, Purucker and Hutter (AutoML 2024): after each fold, a trial stops
  when the mean of its folds so far is below the worst fold of the best complete trial;
- ``one_epoch``: Egele et al. (2023), "one epoch then top-K", online: random configurations
  train one epoch of their first fold, and only those in the top fifth of every configuration
  so far at that epoch go on to full cross-validation (the first 3 always do).

B is ``--budget`` full trials' epochs (folds x epochs each); every method runs to 3B. Printed
per task and method: the holdout score of the best-by-CV pick at 0.25B .. 3B (quartiles over
seeds); the compute at which the method's median pick (over seeds) first reaches random
search's median pick at 3B, as a fraction of B, with a 90% bootstrap interval over seeds
(seeds resampled, the same resample for both); and the false-prune rate: of the trials that
landed on the table's best-holdout configuration, the share pruned.

    .venv/bin/python bench/search_replay.py [--seeds 100] [--first-seed 50] [--json out.json]

Seeds below 50 are for choosing defaults; report on 50 and above.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import functools
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import joblib
import numpy as np
import optuna
from optuna.pruners import BasePruner, HyperbandPruner, NopPruner, SuccessiveHalvingPruner
from optuna.trial import FrozenTrial, TrialState

from bench import common
from bench.replay_table import CURVES, Curves, ReplayData, replaying

POINTS = (0.25, 0.5, 1.0, 2.0, 3.0)  # compute points, as multiples of B
GRID = np.round(np.arange(1, 61) / 20, 4)  # where the compute to reach random's pick is sought
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# --- the methods other than hpo's own -------------------------------------------------------------


class AxisReporter:
    """Reports a trial at every epoch on one step axis, for Optuna's SHA and Hyperband.

    It stands in for `search.engine.rungs.RungReporter` (same constructor and calls): the
    step is the epochs trained over all folds so far, the value the mean of the folds' best
    scores, the fold under way counted by its best epoch yet.
    """

    def __init__(self, trial: optuna.Trial, rungs: Any, *, epochs: int, p: float) -> None:
        self.trial, self.epochs = trial, epochs
        self.folds: list[float] = []
        self.best = -math.inf
        self.pruned_at: dict[str, Any] | None = None

    def after_epoch(self, fold: int, epoch: int, score: float) -> str | None:
        self.best = max(self.best, score)
        step = len(self.folds) * self.epochs + epoch + 1
        value = (sum(self.folds) + self.best) / (len(self.folds) + 1)
        self.trial.report(value, step)
        if not self.trial.should_prune():
            return None
        self.pruned_at = {"fold": fold, "epoch": epoch + 1, "rung": step, "score": value}
        return f"fold {fold}, epoch {epoch + 1}: pruned at step {step}"

    def after_fold(self, fold: int, scores: list[float]) -> str | None:
        self.folds, self.best = list(scores), -math.inf
        return None


class Forgiving(BasePruner):
    """Stops a trial whose mean over its folds so far is below the best trial's worst fold."""

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        from search.keys import FOLD_SCORES
        from search.study.paired import best_complete

        best = best_complete(study)
        mine = trial.user_attrs.get(FOLD_SCORES, [])
        theirs = best.user_attrs.get(FOLD_SCORES, []) if best else []
        return bool(mine and theirs) and statistics.fmean(mine) < min(theirs)


class TopAfterOneEpoch(BasePruner):
    """At the rung after one epoch (step 0), only the best ``share`` of all trials go on."""

    def __init__(self, share: float = 0.2, min_peers: int = 3) -> None:
        from search.study.pruning import PeerMedian

        self.inner = PeerMedian(min_peers=min_peers, percentile=100 * (1 - share))

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return trial.last_step == 0 and self.inner.prune(study, trial)


@dataclass(frozen=True)
class Method:
    """A search method: hpo's sampler setting, a pruner for the space, and how trials report."""

    sampler: str | None  # None: the space's own
    pruner: Callable[[Any], BasePruner]
    overrides: tuple[str, ...] = ()
    reporter: type | None = None  # None: hpo's rung reporter
    staged: tuple[tuple[str, Any], ...] = ()  # build_sampler's startup / explore_every, if not


def hpo_pruner(space: Any) -> BasePruner:
    """The pruner hpo builds from the space's settings."""
    from search.study.pruning import Rungs, build_pruner

    s = space.settings
    return build_pruner(
        s.pruner, rungs=Rungs.of(s), min_peers=s.pruner_startup_trials, p=s.pruner_p
    )


def _steps(space: Any) -> int:
    return space.settings.folds * space.config({}).epochs


def _sha(space: Any) -> BasePruner:
    # Rungs at a ninth and a third of the whole schedule (a reduction factor of 3).
    return SuccessiveHalvingPruner(min_resource=max(_steps(space) // 9, 1), reduction_factor=3)


def _hyperband(space: Any) -> BasePruner:
    steps = _steps(space)
    return HyperbandPruner(min_resource=max(steps // 9, 1), max_resource=steps, reduction_factor=3)


METHODS = {
    "hpo": Method(None, hpo_pruner),
    "random": Method("random", lambda space: NopPruner()),
    "tpe": Method("tpe", lambda space: NopPruner()),
    "sha": Method("tpe", _sha, reporter=AxisReporter),
    "hyperband": Method("tpe", _hyperband, reporter=AxisReporter),
    "wilcoxon": Method("tpe", hpo_pruner, overrides=("pruner=wilcoxon",)),
    "forgiving": Method("tpe", lambda space: Forgiving()),
    "one_epoch": Method("random", lambda space: TopAfterOneEpoch(), ("pruner_epoch_rungs=[0.01]",)),
}


def variant_method(settings: str) -> Method:
    """hpo with ``SETTING=VALUE;...`` changed: the space's settings, or the sampler's staging."""
    overrides, staged = [], []
    for item in settings.split(";"):
        key, _, value = item.partition("=")
        if key == "startup":
            staged.append((key, _count(key, value)))
        elif key == "explore_every":
            staged.append((key, None if value == "none" else _count(key, value)))
        else:
            overrides.append(item)
    return Method(None, hpo_pruner, overrides=tuple(overrides), staged=tuple(staged))


def _count(key: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{key} takes a whole number of trials of at least 1, not {value!r}")
    return int(value)


# --- one replayed search --------------------------------------------------------------------------


def spent(trials: list[FrozenTrial]) -> int:
    """Epochs trained by ``trials`` (pruned ones included)."""
    return sum(int(t.user_attrs.get("epochs", 0)) for t in trials)


def search(curves: Curves, method: Method, seed: int, budget: int) -> list[FrozenTrial]:
    """One seeded search on ``curves`` until it trained ``budget`` epochs (or stopped itself)."""
    from search.engine.objective import Objective
    from search.engine.runner import RunLimits, optimize
    from search.hooks import HookList
    from search.space.spacefile import load_space
    from search.study.samplers import build_sampler

    space = load_space(curves.space.path, list(method.overrides))
    study = optuna.create_study(
        direction="maximize",
        sampler=build_sampler(
            method.sampler or space.settings.sampler,
            seed=seed,
            process_seed=seed,
            grouped=space.conditional,
            space=curves.dists,
            **dict(method.staged),
        ),
        pruner=method.pruner(space),
    )
    objective, quiet = (
        Objective(space, ReplayData(space.settings.folds), HookList([])),
        HookList([]),
    )
    target = 0
    with replaying(curves, method.reporter):
        while spent(study.get_trials(deepcopy=False)) < budget:
            target += 1
            limits = RunLimits(
                target=target, poll_seconds=0, patience=space.settings.patience_trials
            )
            if optimize(study, objective, quiet, limits) == "patience":
                break
    return sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number)


@dataclass(frozen=True)
class Run:
    """What one search showed: its picks along compute, and its trials on the best row."""

    compute: np.ndarray  # epochs after each finished trial
    pick: np.ndarray  # holdout of the best-by-CV complete trial so far (NaN before any)
    on_best: int  # trials that landed on the table's best-holdout row
    pruned_best: int  # of them, pruned
    on_top: int  # trials that landed on a row in the table's top 5% by holdout
    pruned_top: int  # of them, pruned

    def at(self, epochs: float) -> float:
        """The pick's holdout score within ``epochs`` of compute."""
        done = np.searchsorted(self.compute, epochs, side="right")
        return float(self.pick[done - 1]) if done else math.nan


def summarise(curves: Curves, trials: list[FrozenTrial]) -> Run:
    """A search's picks along compute and its record on the table's best configuration."""
    best_row = int(np.nanargmax(curves.holdout))
    top = curves.holdout >= np.nanpercentile(curves.holdout, 95)
    compute, pick = [], []
    used, value, score = 0, -math.inf, math.nan
    seen = np.zeros((2, 2), int)  # [best row, top 5%] x [landed on, pruned]
    for trial in trials:
        used += int(trial.user_attrs.get("epochs", 0))
        row = curves.nearest(trial.params)
        seen[:, 0] += [row == best_row, top[row]]
        seen[:, 1] += [row == best_row, top[row]] if trial.state == TrialState.PRUNED else 0
        if trial.state == TrialState.COMPLETE and trial.value > value:
            value, score = trial.value, float(curves.holdout[row])
        compute.append(used)
        pick.append(score)
    return Run(np.array(compute), np.array(pick), *(int(n) for n in seen.ravel()))


# --- the figures ----------------------------------------------------------------------------------


def _median(values: Any) -> float:
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if len(values) else math.nan


def reach(curve: np.ndarray, target: float) -> float:
    """The first grid point (fraction of B) where the median ``curve`` reaches ``target``."""
    hit = np.flatnonzero(curve >= target - 1e-12)
    return float(GRID[hit[0]]) if len(hit) else math.inf


def compute_to_random(runs: list[Run], random: list[Run], b: int, boots: int, seed: int):
    """Compute (fraction of B) to reach random's median pick at 3B, and a 90% interval."""
    mine = np.array([[r.at(g * b) for g in GRID] for r in runs])
    theirs = np.array([r.at(3 * b) for r in random])
    found = reach(np.nanmedian(mine, axis=0), _median(theirs))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(boots):
        pick = rng.integers(len(runs), size=len(runs))
        draws.append(reach(np.nanmedian(mine[pick], axis=0), _median(theirs[pick])))
    low, high = np.percentile(draws, [5, 95], method="nearest") if draws else (math.nan, math.nan)
    return found, [float(low), float(high)]


def figures(runs: dict[str, list[Run]], b: int, boots: int) -> dict[str, dict[str, Any]]:
    """Per method: quartiles at each point, compute to random's 3B, false-prune rate."""
    out = {}
    for name, method_runs in runs.items():
        at = {p: [r.at(p * b) for r in method_runs] for p in POINTS}
        quartiles = {
            p: [float(np.nanpercentile(v, q)) for q in (25, 50, 75)] for p, v in at.items()
        }
        compute, ci = compute_to_random(method_runs, runs["random"], b, boots, seed=22)
        sampled = sum(r.on_best for r in method_runs)
        top = sum(r.on_top for r in method_runs)
        out[name] = {
            "score_at_B": quartiles[1.0][1],
            "compute_to_random_3B": compute,
            "compute_to_random_3B_ci": ci,
            "false_prune_rate": _share(sum(r.pruned_best for r in method_runs), sampled),
            "best_sampled": sampled,
            "false_prune_rate_top5": _share(sum(r.pruned_top for r in method_runs), top),
            "top5_sampled": top,
            "quartiles": {f"{p:g}B": q for p, q in quartiles.items()},
        }
    return out


def _share(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def report(task: str, found: dict[str, dict[str, Any]], seeds: int, b: int) -> None:
    """Print one task's tables."""
    headers = ["method"] + [f"{p:g}B" for p in POINTS]
    rows = [
        [name] + [f"{q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}]" for q in f["quartiles"].values()]
        for name, f in found.items()
    ]
    title = f"{task}: holdout of the best-by-CV pick, median [quartiles] over {seeds} seeds"
    common.print_table(f"{title} (B = {b} epochs)", headers, rows)
    rows = [
        [
            name,
            f["compute_to_random_3B"],
            "[{:.2f}, {:.2f}]".format(*f["compute_to_random_3B_ci"]),
            f"{f['false_prune_rate']:.3f} of {f['best_sampled']}",
            f"{f['false_prune_rate_top5']:.3f} of {f['top5_sampled']}",
        ]
        for name, f in found.items()
    ]
    common.print_table(
        f"{task}: compute to reach random's median pick at 3B (fraction of B), false prunes",
        ["method", "compute / B", "90% interval", "pruned: best config", "top 5% configs"],
        rows,
    )


# --- the command ----------------------------------------------------------------------------------


@functools.cache
def _curves(task: str, folder: Path) -> Curves:
    return Curves.load(task, folder)


def replay_one(task: str, folder: Path, method: Method, seed: int, budget: int) -> Run:
    """One method's search on one seed (in a worker process: the table is read once there)."""
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    curves = _curves(task, folder)
    return summarise(curves, search(curves, method, seed, budget))


def replay_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every method on every seed of one task; the figures."""
    curves = _curves(task, args.curves)
    b = args.budget * curves.space.settings.folds * curves.space.config({}).epochs
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    runs: dict[str, list[Run]] = {}
    # By its module's name: a worker process unpickles it by reference (not __main__'s copy).
    from bench.search_replay import replay_one

    for name in args.methods:
        started = time.perf_counter()
        runs[name] = joblib.Parallel(n_jobs=args.jobs)(
            joblib.delayed(replay_one)(task, args.curves, METHODS[name], seed, 3 * b)
            for seed in seeds
        )
        took = time.perf_counter() - started
        print(f"{task} {name}: {args.seeds} seeds in {took:.0f} s", flush=True)
    return {
        "seeds": args.seeds,
        "first_seed": args.first_seed,
        "budget_epochs": b,
        "variants": {m: s for m, s in vars(args).get("variants", {}).items() if m in runs},
        "methods": figures(runs, b, args.boots),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: replay every method on each task's table, print and write the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curves", type=Path, default=CURVES, help="folder of <task>.parquet")
    p.add_argument("--tasks", nargs="*", help="tasks to replay (default: every table found)")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--first-seed", type=int, default=50, help="seeds below 50 choose defaults")
    p.add_argument("--budget", type=int, default=20, help="B, in full trials (folds x epochs)")
    p.add_argument("--boots", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--jobs", type=int, default=1, help="searches run at once (processes)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SETTING=VALUE[;SETTING=VALUE]",
        help="also replay hpo with these settings changed, as method hpo:NAME (to choose "
        "defaults on seeds below 50), e.g. --variant p05=pruner_p=0.05; besides the space's "
        "settings, startup=N (Halton start-up trials of the model-based sampler) and "
        "explore_every=N|none (one trial in N takes a Halton point after it)",
    )
    p.add_argument("--json", type=Path, help="write the figures there")
    p.add_argument("--quick", action="store_true", help="3 seeds, B of 8 trials, 200 resamples")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.budget, args.boots = 3, 8, 200
    args.variants = {}
    for variant in args.variant:
        name, _, settings = variant.partition("=")
        if not name or "=" not in settings:
            p.error(f"--variant {variant!r}: write NAME=SETTING=VALUE, e.g. p05=pruner_p=0.05")
        try:
            METHODS[f"hpo:{name}"] = variant_method(settings)
        except ValueError as error:
            p.error(f"--variant {variant!r}: {error}")
        args.methods.append(f"hpo:{name}")
        args.variants[f"hpo:{name}"] = settings
    if "random" not in args.methods:
        args.methods = ["random", *args.methods]  # every figure is against random search
    tasks = args.tasks or sorted(path.stem for path in args.curves.glob("*.parquet"))
    missing = [t for t in tasks if not (args.curves / f"{t}.parquet").is_file()]
    if not tasks or missing:
        print(f"No table {missing or '*'}.parquet in {args.curves}; record one with "
              "bench/curves/record.py or pass --curves.", file=sys.stderr)  # fmt: skip
        return 2
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    common.header(
        "search replay: recorded learning curves, every method at equal compute",
        1,
        [f"seeds {args.first_seed}..{args.first_seed + args.seeds - 1}; B = {args.budget} "
         f"full trials' epochs; tables in {args.curves}"],
    )  # fmt: skip
    out: dict[str, Any] = {"tasks": {}}
    for task in tasks:
        print(f"{task}: {len(_curves(task, args.curves).params)} recorded configurations")
        out["tasks"][task] = replay_task(task, args)
        print()
        report(task, out["tasks"][task]["methods"], args.seeds, out["tasks"][task]["budget_epochs"])
    if args.json:
        args.json.write_text(json.dumps(_finite(out), indent=2))
    return 0


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinity as null (JSON has neither), numbers as plain floats."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


if __name__ == "__main__":
    sys.exit(main())

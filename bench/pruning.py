"""Pruning: what pruning saves (time, epochs) and what it costs (best score), same study.

The same seeded study (a space file, by default spaces/baseline.py, with a fixed trial budget and
``tracking=none``) runs twice with `hpo run`: once with ``pruner=median`` (hpo's default: rung
median, then the paired fold rule) and once with ``pruner=none``. Epochs are the sum of every
trial's ``epochs`` user attribute in the Optuna storage (pruned trials included).

Goals of the pruned run (issue 11, for the README's 50-trial baseline study): at least 8
complete trials; at most 10% of trials near-copies of an earlier one (same choices, every
number within 10% of its range); pruned trials costing on average at most 0.35 of a complete
one (epochs); best CV score at least ``--best-goal``; wall time at most 0.6 of the run without
pruning; and the two best scores within one fold standard deviation of each other.

    .venv/bin/python bench/pruning.py [--quick] [--trials 50] [key=value ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

WALL_GOAL, COST_GOAL, COPIES_GOAL, COMPLETE_GOAL = 0.6, 0.35, 0.10, 8
# Quick: few trials, so pruning may start after the first one and from the first epoch.
_QUICK = ["folds=2", "epochs=2", "pruner_startup_trials=1"]


def run_study(args, pruner: str, overrides: list[str]) -> tuple[common.StudySummary, float]:
    """One `hpo run` with ``pruner``; returns its summary and wall seconds."""
    folder = common.fresh_dir(args.workdir / "pruning" / pruner)
    done = common.run_hpo(
        args.space,
        study=f"pruner-{pruner}",
        trials=args.trials,
        overrides=[*overrides, f"pruner={pruner}", "tracking=none", f"seed={args.seed}"],
        cwd=folder,
        threads=args.threads,
    )
    done.check(f"hpo run with pruner={pruner}")
    return common.read_study(folder, f"pruner-{pruner}"), done.seconds


def shape(folder: Path, study: str) -> tuple[float, float]:
    """(share of near-copies, mean epochs of a pruned trial / of a complete one) of a study."""
    import optuna
    from optuna.trial import TrialState

    from search.study.samplers import near_copies

    url = f"sqlite:///{folder / 'studies' / study / 'study.db'}"
    trials = optuna.load_study(study_name=study, storage=url).trials
    epochs = {
        state: [t.user_attrs.get("epochs", 0) for t in trials if t.state == state]
        for state in (TrialState.COMPLETE, TrialState.PRUNED)
    }
    mean = {state: sum(v) / len(v) if v else float("nan") for state, v in epochs.items()}
    cost = common.ratio(mean[TrialState.PRUNED], mean[TrialState.COMPLETE])
    return len(near_copies(trials)) / max(len(trials), 1), cost


def _goal(limit: dict[str, float]) -> str:
    ((side, bound),) = limit.items()
    return f"{'>=' if side == 'at_least' else '<='} {bound:.4g}"


def main(argv: list[str] | None = None) -> int:
    """Command line: run the study with and without pruning and print the comparison."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="passed to both runs")
    p.add_argument("--space", type=Path, default=common.REPO / "spaces" / "baseline.py")
    p.add_argument("--trials", type=int, default=50, help="trial budget of each run")
    p.add_argument("--best-goal", type=float, default=0.996, help="best CV score goal")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.quick:
        args.trials = 4
        overrides = _QUICK + overrides
    args.threads = common.set_threads(args.threads)
    common.header(
        "pruning: epochs trained with pruner=median / with pruner=none, same seeded study",
        args.threads,
        [
            f"space {args.space}; {args.trials} trials; seed {args.seed}; overrides "
            f"{' '.join(overrides) or 'none'}"
        ],
    )
    pruned, pruned_s = run_study(args, "median", overrides)
    copies, cost = shape(args.workdir.absolute() / "pruning" / "median", "pruner-median")
    full, full_s = run_study(args, "none", overrides)
    share = common.ratio(pruned.epochs, full.epochs)
    wall = common.ratio(pruned_s, full_s)
    gap = abs(pruned.best - full.best)
    tolerance = max(pruned.best_std, full.best_std)
    rows = [
        [
            "median",
            pruned.epochs,
            pruned.pruned,
            pruned.finished,
            pruned_s,
            pruned.best,
            pruned.best_std,
        ],
        ["none", full.epochs, full.pruned, full.finished, full_s, full.best, full.best_std],
    ]
    common.print_table(
        "Both runs",
        ["pruner", "epochs", "pruned", "finished", "wall s", "best", "best fold std"],
        rows,
    )
    checks = [
        ("complete trials", pruned.complete, {"at_least": COMPLETE_GOAL}),
        ("near-copies / trials", copies, {"at_most": COPIES_GOAL}),
        ("pruned trial / complete trial (epochs)", cost, {"at_most": COST_GOAL}),
        ("best CV score", pruned.best, {"at_least": args.best_goal}),
        ("wall median / none", wall, {"at_most": WALL_GOAL}),
        ("|best median - best none| (goal: fold std)", gap, {"at_most": tolerance}),
    ]
    goals = [
        [what, value, _goal(limit), common.meets(value, **limit)] for what, value, limit in checks
    ]
    goals.append(["epochs median / none", share, "(for information)", ""])
    common.print_table("Goals", ["what", "value", "goal", "met"], goals)
    return 0


if __name__ == "__main__":
    sys.exit(main())

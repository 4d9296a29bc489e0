"""Pruning: what pruning saves (epochs trained) and what it costs (best score), same study.

The same seeded study (a space file, by default spaces/baseline.py, with a fixed trial budget and
``tracking=none``) runs twice with `hpo run`: once with ``pruner=median`` (hpo's epoch-level
median rule plus its fold-level Wilcoxon rule) and once with ``pruner=none``. Epochs are the
sum of every trial's ``epochs`` user attribute in the Optuna storage (pruned trials included).

Goals: epochs with pruning / epochs without at most 0.5, and the two best scores within one fold
standard deviation of each other (the larger ``score_std`` of the two best trials).

    .venv/bin/python bench/pruning.py [--quick] [--trials 30] [key=value ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

EPOCH_GOAL = 0.5
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


def main(argv: list[str] | None = None) -> int:
    """Command line: run the study with and without pruning and print the comparison."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="passed to both runs")
    p.add_argument("--space", type=Path, default=common.REPO / "spaces" / "baseline.py")
    p.add_argument("--trials", type=int, default=30, help="trial budget of each run")
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
    full, full_s = run_study(args, "none", overrides)
    share = common.ratio(pruned.epochs, full.epochs)
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
    goals = [
        [
            "epochs median / none",
            share,
            f"<= {EPOCH_GOAL}",
            common.meets(share, at_most=EPOCH_GOAL),
        ],
        [
            "|best median - best none|",
            gap,
            f"<= {tolerance:.4f} (fold std)",
            common.meets(gap, at_most=tolerance),
        ],
        ["wall median / none", common.ratio(pruned_s, full_s), "(for information)", ""],
    ]
    common.print_table("Goals", ["what", "value", "goal", "met"], goals)
    return 0


if __name__ == "__main__":
    sys.exit(main())

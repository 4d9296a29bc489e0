"""End to end: `hpo run` vs the tutorial-style reference study, same space, data and budget.

For each dataset (builtin:digits, and generated photos: about 500x375 JPEGs in 5 classes), both
tools run as fresh subprocesses in empty folders, so both pay for interpreter start, imports
and any one-time preparation (hpo's image cache; the reference's PNG export of the digits):

- hpo: ``hpo run SPACE --trials N --study S data=... tracking=none threads=T``; the best value
  and the best trial's fold standard deviation are read back from ``studies/S/study.db``;
- reference: ``bench/reference_optuna.py SPACE --trials N data=...`` (bench/reference_optuna.py
  says what it does and does not do).

Goals: hpo at least 2x faster (reference seconds / hpo seconds >= 2) and hpo's best
cross-validated score at least as good as the reference's.

    .venv/bin/python bench/end_to_end.py [--quick] [--trials 20] [key=value ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
from dataclasses import dataclass

from bench import common
from bench.photos import make_photos

SPEED_GOAL = 2.0
# Small and fast: two folds, one epoch, and a backbone and batch size that train quickly.
_QUICK = ["folds=2", "epochs=1", "backbone=test_convnext", "batch_size=64"]


@dataclass(frozen=True)
class Outcome:
    """One tool's run on one dataset."""

    seconds: float
    best: float
    best_std: float
    finished: int
    pruned: int
    epochs: int


def run_hpo(space: Path, data: str, overrides: list[str], args, folder: Path) -> Outcome:
    """`hpo run` in ``folder``; its result is read from the study's Optuna storage."""
    done = common.run_hpo(
        space,
        study="e2e",
        trials=args.trials,
        overrides=[f"data={data}", *overrides, "tracking=none"],
        cwd=folder,
        threads=args.threads,
    )
    done.check("hpo run")
    study = common.read_study(folder, "e2e")
    return Outcome(
        done.seconds, study.best, study.best_std, study.finished, study.pruned, study.epochs
    )


def run_reference(space: Path, data: str, overrides: list[str], args, folder: Path) -> Outcome:
    """The reference study as a subprocess; its result comes back as JSON."""
    result = folder / "result.json"
    command = [
        sys.executable,
        str(common.REPO / "bench" / "reference_optuna.py"),
        str(space.absolute()),
        f"data={data}",
        *overrides,
        f"--trials={args.trials}",
        f"--threads={args.threads}",
        f"--workers={args.workers}",
        f"--json={result}",
        f"--workdir={folder}",
    ]
    env = common.child_env(args.threads)
    done = common.run_logged(command, cwd=folder, env=env, log=folder / "reference.log")
    done.check("reference study")
    found = json.loads(result.read_text())
    finished = found["complete"] + found["pruned"]
    return Outcome(
        done.seconds,
        found["best_value"],
        found["best_std"],
        finished,
        found["pruned"],
        found["epochs"],
    )


def dataset_source(name: str, args) -> str:
    """The ``data=`` value for a dataset name."""
    if name == "digits":
        return "builtin:digits"
    root = args.workdir.absolute() / f"photos-5x{args.per_class}"
    return str(make_photos(root, per_class=args.per_class, n_jobs=-1))


def main(argv: list[str] | None = None) -> int:
    """Command line: run both tools on every dataset and print the comparison."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="passed to both tools")
    p.add_argument("--space", type=Path, default=common.REPO / "spaces" / "baseline.py")
    p.add_argument("--trials", type=int, default=20, help="trial budget of each tool")
    p.add_argument("--datasets", nargs="+", default=["digits", "photos"])
    p.add_argument("--per-class", type=int, default=60, help="photos per class (5 classes)")
    p.add_argument("--workers", type=int, default=2, help="the reference's DataLoader workers")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.quick:
        args.trials, args.per_class = 2, 12
        overrides = _QUICK + overrides
    args.threads = common.set_threads(args.threads)
    common.header(
        "end to end: hpo run vs a tutorial-style Optuna study, same space and budget",
        args.threads,
        [
            f"space {args.space}; {args.trials} trials; overrides {' '.join(overrides) or 'none'}",
            f"both tools get {args.threads} torch threads; the reference uses "
            f"{args.workers} DataLoader workers; wall = subprocess start to exit",
        ],
    )
    times, scores = [], []
    for name in args.datasets:
        data = dataset_source(name, args)
        base = common.fresh_dir(args.workdir / "end-to-end" / name)
        hpo = run_hpo(args.space, data, overrides, args, common.fresh_dir(base / "hpo"))
        ref = run_reference(args.space, data, overrides, args, common.fresh_dir(base / "ref"))
        speedup = common.ratio(ref.seconds, hpo.seconds)
        speed_goal = f">= {SPEED_GOAL:.0f}: {common.meets(speedup, at_least=SPEED_GOAL)}"
        times.append([name, args.trials, hpo.seconds, ref.seconds, speedup, speed_goal])
        better = _at_least_as_good(hpo.best, ref.best, _metric(args.space, overrides))
        scores.append(
            [
                name,
                f"{hpo.best:.4f} ± {hpo.best_std:.4f}",
                f"{ref.best:.4f} ± {ref.best_std:.4f}",
                f"hpo >= ref: {better}",
                f"{hpo.finished} ({hpo.pruned} pruned)",
                f"{ref.finished} ({ref.pruned} pruned)",
                f"{hpo.epochs} / {ref.epochs}",
            ]
        )
    common.print_table(
        "Wall time",
        ["data", "trials", "hpo s", "reference s", "reference/hpo", "goal"],
        times,
    )
    common.print_table(
        "Best cross-validated score (mean over folds ± the best trial's fold std)",
        ["data", "hpo", "reference", "goal", "hpo finished", "ref finished", "epochs hpo/ref"],
        scores,
    )
    return 0


def _metric(space: Path, overrides: list[str]) -> str:
    from search.space.spacefile import load_space

    return load_space(space, overrides).settings.metric


def _at_least_as_good(hpo: float, ref: float, metric: str) -> str:
    ok = hpo <= ref if metric == "log_loss" else hpo >= ref
    return "yes" if ok else "no"


if __name__ == "__main__":
    sys.exit(main())

"""Search quality: best held-out score against compute, hpo's default vs TPE and random search.

The task is one on which configurations really differ: scikit-learn's digits at low resolution,
few images and a share of wrong labels in the cross-validation part (the holdout keeps its true
labels). Its spread, the 10th and 90th percentile of random configurations' CV scores, is
printed first (goal: at least 0.10 apart, or the task cannot tell searches apart).

For each seed, three searches of the same space run with the same compute, counted in epochs
trained (pruned trials' epochs included):

- ``hpo``: hpo's defaults (random proposals; Halton start-up, then TPE with every third
  trial on Halton, before 2026-12-07; rung and fold pruning);
- ``tpe``: ``sampler=tpe pruner=none``: hpo's model-based sampler without pruning;
- ``random``: ``sampler=random pruner=none``, run to 3x the budget.

At compute points the best trial so far (by CV score) is trained on all cross-validation
images and scored on the holdout (last epoch, never chosen on the holdout): the mean over
``--retrains`` training seeds, on every digit not in the CV part (1,297 by default), so that
the score says how good the picked configuration is rather than how lucky one training was.

Goals (medians over seeds): hpo at budget B >= random at 3B; hpo at B > tpe at B. The same
comparisons are printed for B/4 and B/2 too (random's 3B/4 and 3B/2 are measured for them), as
information on where in the budget the methods differ; the goals are judged at B.

    .venv/bin/python bench/search_quality.py [--seeds 5] [--budget 240] [--images 500] ...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import statistics
import warnings
from dataclasses import dataclass

import joblib
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

from bench import common

METHODS = {
    "hpo": [],
    "tpe": ["sampler=tpe", "pruner=none"],
    "random": ["sampler=random", "pruner=none"],
}
POINTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # compute points, as multiples of the budget
DIGITS = 1797  # images in scikit-learn's digits
BUDGETS = (0.25, 0.5, 1.0)  # where hpo is compared with tpe at the same and random at 3x
SPACE = """\
from search.space import choice, loguniform, uniform

data = {data!r}
image_size = {size}
folds = {folds}
epochs = {epochs}
metric = "accuracy"
augment = "light"
hflip = False
tracking = "none"
threads = 1
backbone = choice("test_resnet", "test_vit")
lr = loguniform(1e-4, 3e-2)
batch_size = choice(16, 32, 64)
weight_decay = loguniform(1e-5, 5e-2)
dropout = uniform(0.0, 0.5)
loss = choice("ce", "focal", "label_smoothing")
focal_gamma = uniform(0.5, 3.0, when={{"loss": "focal"}})
label_smoothing = uniform(0.0, 0.2, when={{"loss": "label_smoothing"}})
"""


# --- the task -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """The written data: the CV images (noisy labels), and all images for holdout scoring."""

    cv_csv: Path
    all_csv: Path
    cv: int
    holdout: int


def make_task(folder: Path, *, images: int, holdout: int, noise: float, seed: int) -> Task:
    """Write ``images`` digits (a share ``noise`` relabelled at random) plus a clean holdout."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))[: images + holdout]
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, i in enumerate(order):
        path = folder / "img" / f"{i}.png"
        Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8)).save(path)
        label = int(digits.target[i])
        if k < images and rng.random() < noise:
            label = int(rng.integers(10))
        rows.append(f"img/{i}.png,{label}")
    (folder / "cv.csv").write_text("path,label\n" + "\n".join(rows[:images]) + "\n")
    (folder / "all.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return Task(folder / "cv.csv", folder / "all.csv", images, holdout)


# --- one search -----------------------------------------------------------------------------------


def spent(trials: list[FrozenTrial]) -> int:
    """Epochs trained by ``trials`` (pruned ones included)."""
    return sum(int(t.user_attrs.get("epochs", 0)) for t in trials)


def search(space: Path, name: str, overrides: list[str], budget: int) -> list[FrozenTrial]:
    """Run study ``name`` until it has trained ``budget`` epochs; its finished trials in order."""
    from search.context import RunRequest
    from search.engine.objective import Objective
    from search.engine.run import prepare
    from search.engine.runner import RunLimits, optimize
    from search.hooks import HookList

    request = RunRequest(str(space), overrides, study=name, progress=False, export=False)
    current = prepare(request)
    objective, quiet = Objective(current.space, current.data, HookList([])), HookList([])
    target = 0
    while spent(current.study.trials) < budget:
        target += 2  # a few trials at a time, then count the epochs again
        optimize(current.study, objective, quiet, RunLimits(target=target, poll_seconds=0.1))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    return sorted(current.study.get_trials(states=finished), key=lambda t: t.number)


def best_by(trials: list[FrozenTrial], compute: float) -> FrozenTrial | None:
    """The best complete trial (CV score) among those finished within ``compute`` epochs."""
    best, used = None, 0
    for trial in trials:
        used += int(trial.user_attrs.get("epochs", 0))
        if used > compute:
            break
        if trial.state == TrialState.COMPLETE and (best is None or trial.value > best.value):
            best = trial
    return best


class Holdout:
    """Scores a trial's config on the clean holdout, training once on every CV image."""

    def __init__(self, task: Task, size: int, retrains: int) -> None:
        from trainer.cache import cached_images
        from trainer.sources import load_table

        self.images = cached_images(load_table(str(task.all_csv)), size, progress=False)
        self.cv, self.holdout = np.arange(task.cv), np.arange(task.cv, task.cv + task.holdout)
        self.retrains = retrains
        self.scores: dict[str, float] = {}

    def score(self, trial: FrozenTrial | None) -> float:
        if trial is None:
            return float("nan")
        from trainer.config import TrainConfig
        from trainer.loop import Split, fit

        key = json.dumps(trial.user_attrs["config"], sort_keys=True)
        if key not in self.scores:
            scores = []
            for seed in range(self.retrains):  # the same training seeds for every config
                config = TrainConfig(**{**trial.user_attrs["config"], "seed": seed})
                result = fit(config, self.images, Split(0, self.cv, self.holdout))
                scores.append(result.history[-1].score)
            self.scores[key] = float(np.mean(scores))
        return self.scores[key]


# --- the report -----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def spread(runs: list[list[FrozenTrial]]) -> tuple[float, float]:
    """10th and 90th percentile of random configurations' CV scores (complete trials)."""
    values = [t.value for run in runs for t in run if t.state == TrialState.COMPLETE]
    return tuple(np.percentile(values, [10, 90])) if values else (float("nan"), float("nan"))


def rung_predictions(runs: list[list[FrozenTrial]], top: int = 20) -> list[list[object]]:
    """How well each pruning rung's value ranks random configurations by their final CV score.

    Unpruned random trials report at every rung, so for each rung and seed the Spearman rank
    correlation between the value there and the trial's final value is measured, over every
    complete trial and over the ``top`` best (among good configurations is where a pruning
    decision matters). Rows: rung, median correlation over seeds (all, top).
    """
    from scipy.stats import spearmanr

    from search.space.settings import StudySettings
    from search.study.pruning import Rungs

    fractions = tuple(StudySettings().pruner_epoch_rungs)
    rungs = Rungs(fractions, folds=0)
    steps = sorted({s for run in runs for t in run for s in t.intermediate_values})
    rows: list[list[object]] = []
    for step in steps:
        done = rungs.folds_done(step)
        name = f"after {done} fold(s)" if done else f"fold 0 at {fractions[step]:.2g} of its epochs"
        rho: dict[str, list[float]] = {"all": [], "top": []}
        for run in runs:
            trials = [t for t in run if t.state == TrialState.COMPLETE]
            trials = [t for t in trials if step in t.intermediate_values]
            best = sorted(trials, key=lambda t: t.value, reverse=True)[:top]
            for key, group in (("all", trials), ("top", best)):
                if len(group) > 2:
                    pairs = [(t.intermediate_values[step], t.value) for t in group]
                    rho[key].append(float(spearmanr(*zip(*pairs, strict=True))[0]))
        rows.append([name, median(rho["all"]), median(rho["top"])])
    return rows


def report(args, results: dict[str, list[dict[float, float]]], runs) -> None:
    low, high = spread(runs["random"])
    common.print_table(
        "Task spread: random configurations' CV accuracy",
        ["P10", "P90", "P90 - P10", "goal", "met"],
        [[low, high, high - low, ">= 0.10", common.meets(high - low, at_least=0.10)]],
    )
    common.print_table(
        "How each rung ranks random configurations by final CV score (Spearman, median over seeds)",
        ["rung", "all complete", "best 20"],
        rung_predictions(runs["random"]),
    )
    headers = ["method"] + [f"{p:g}B ({int(p * args.budget)} ep)" for p in POINTS]
    nan = float("nan")
    rows = [[m] + [median([s.get(p, nan) for s in r]) for p in POINTS] for m, r in results.items()]
    common.print_table("Best holdout accuracy so far (median over seeds)", headers, rows)
    for method, per_seed in results.items():
        lines = [[seed] + [s.get(p, nan) for p in POINTS] for seed, s in enumerate(per_seed)]
        common.print_table(f"{method}: per seed", ["seed", *headers[1:]], lines)
    at = {(m, p): median([s.get(p, nan) for s in r]) for m, r in results.items() for p in POINTS}
    goals = []
    for b in BUDGETS:
        name = "B" if b == 1 else f"{b:g}B"
        versus_random = at["hpo", b] - at["random", 3 * b]
        versus_tpe = at["hpo", b] - at["tpe", b]
        judged = "goal" if b == 1 else "information"
        goals += [
            [f"hpo at {name} - random at {3 * b:g}B", versus_random, ">= 0", judged,
             common.meets(versus_random, at_least=0)],
            [f"hpo at {name} - tpe at {name}", versus_tpe, "> 0", judged,
             "yes" if versus_tpe > 0 else "no"],
        ]  # fmt: skip
    common.print_table("Goals (judged at B)", ["what", "value", "wanted", "kind", "met"], goals)


def run_seed(seed: int, space: Path, task: Task, args) -> tuple[dict, dict]:
    """Every method's search for one seed: {method: {point: holdout}}, {method: trials}."""
    common.set_threads(1)  # the space trains with threads=1 too: comparable on a busy machine
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    os.chdir(space.parent)  # studies/ and the image cache go there (in a worker process too)
    holdout = Holdout(task, args.size, args.retrains)
    results, runs = {}, {}
    for method, overrides in METHODS.items():
        budget = args.budget * (3 if method == "random" else 1)
        trials = search(space, f"{method}-{seed}", [*overrides, f"seed={seed}"], budget)
        points = [q for q in POINTS if q * args.budget <= budget]
        results[method] = {q: holdout.score(best_by(trials, q * args.budget)) for q in points}
        runs[method] = trials
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        shown = ", ".join(f"{q:g}B {v:.3f}" for q, v in results[method].items())
        print(
            f"seed {seed} {method}: {len(trials)} trials ({complete} complete), "
            f"{spent(trials)} epochs; best holdout accuracy {shown}",
            flush=True,
        )
    return results, runs


def main(argv: list[str] | None = None) -> int:
    """Command line: build the task, run every method for every seed, print the tables."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds (studies per method)")
    p.add_argument("--budget", type=int, default=240, help="B: epochs of hpo and tpe")
    p.add_argument("--images", type=int, default=500, help="cross-validation images")
    p.add_argument(
        "--holdout", type=int, default=1297, help="holdout images (true labels; at most 1797 - CV)"
    )
    p.add_argument("--retrains", type=int, default=2, help="training seeds per holdout score")
    p.add_argument("--noise", type=float, default=0.2, help="share of CV labels made random")
    p.add_argument("--size", type=int, default=16, help="image size in pixels")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4, help="epochs per fold")
    p.add_argument(
        "--jobs", type=int, default=1, help="seeds run at once, one process and thread each"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.budget, args.images, args.holdout, args.retrains = 1, 12, 200, 100, 1
        args.folds, args.epochs = 2, 2
    if args.images + args.holdout > DIGITS:
        p.error(f"--images plus --holdout is at most {DIGITS} (the digits there are); lower one")
    common.set_threads(1)
    folder = common.fresh_dir(args.workdir / "search_quality")
    task = make_task(folder, images=args.images, holdout=args.holdout, noise=args.noise, seed=0)
    space = folder / "space.py"
    values = {"size": args.size, "folds": args.folds, "epochs": args.epochs}
    space.write_text(SPACE.format(data=str(task.cv_csv), **values))
    common.header(
        "search quality: best holdout accuracy against epochs trained",
        1,
        [
            f"digits at {args.size}px: {args.images} CV images ({args.noise:.0%} random labels), "
            f"{args.holdout} holdout, scored as the mean of {args.retrains} trainings; "
            f"{args.folds} folds x {args.epochs} epochs per trial",
            f"budget B = {args.budget} epochs; {args.seeds} seeds ({args.jobs} at a time); "
            "random runs to 3B",
        ],
    )
    results: dict[str, list[dict[float, float]]] = {m: [] for m in METHODS}
    runs: dict[str, list[list[FrozenTrial]]] = {m: [] for m in METHODS}
    # Each seed's searches are sequential and seeded, so running seeds side by side (one thread
    # each) changes when they finish, not what they find: compute is counted in epochs.
    done = joblib.Parallel(n_jobs=args.jobs)(
        joblib.delayed(run_seed)(seed, space, task, args) for seed in range(args.seeds)
    )
    for scores, trials in done:
        for method in METHODS:
            results[method].append(scores[method])
            runs[method].append(trials[method])
    print()
    report(args, results, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

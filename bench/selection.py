"""Ensemble selection on a holdout, over several seeds: does it pay, and how optimistic is CV?

For each seed, a small study runs on the digits (written as 16 px PNG files, with a share of the
labels flipped so that the task is not solved outright; the same noise is in the holdout), with
a holdout of 20%, then the study is exported with ``ensemble = "select"``. From the export's
scores it prints, on the holdout: the selection, the best trial's soft voting, and the best
single fold model (the best on the holdout: a deliberately optimistic yardstick); and the gap
between the export's CV (optimistic) score and its holdout score.

Goals (issue 13): the selection at least the best trial's soft voting in 4 of 5 seeds, and at
least the best single member in all; the gap is reported.

    .venv/bin/python bench/selection.py                   # 5 seeds x 8 trials
    .venv/bin/python bench/selection.py --seeds 2 --trials 4 --quick
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image
from rich.console import Console

from bench.common import fresh_dir, header, meets, parser, print_table, set_threads

SPACE = """\
from search.space import choice, loguniform, uniform

data = {data!r}
holdout = 0.2
folds = {folds}
epochs = {epochs}
image_size = 16
metric = "accuracy"
pruner = "none"
tracking = "none"
top_k = 5
ensemble = "select"
seed = {seed}
augment = "none"
hflip = False
batch_size = 64
backbone = choice("test_vit", "test_convnext", "test_efficientnet")
lr = loguniform(1e-3, 2e-2)
dropout = uniform(0.0, 0.3)
"""


def noisy_digits(folder: Path, noise: float, seed: int) -> Path:
    """The digits as 8x8 PNG files listed in a CSV, with a share ``noise`` of labels changed."""
    from trainer.sources import load_table

    table = load_table("builtin:digits")
    rng = np.random.default_rng(seed)
    labels = table.labels.copy()
    flip = rng.random(len(labels)) < noise
    labels[flip] = (labels[flip] + rng.integers(1, 10, flip.sum())) % 10
    (folder / "images").mkdir(parents=True)
    rows = ["path,label"]
    for i, (pixels, label) in enumerate(zip(table.arrays, labels, strict=True)):
        Image.fromarray(pixels).save(folder / "images" / f"{i:04d}.png")
        rows.append(f"images/{i:04d}.png,{table.classes[label]}")
    (folder / "digits.csv").write_text("\n".join(rows) + "\n")
    return folder / "digits.csv"


def one_seed(root: Path, data: Path, seed: int, args) -> dict[str, float]:
    """Run and export one study; the holdout and CV scores of its export's rows."""
    from search.engine.run import RunRequest, run
    from search.export.checkpoints import checkpoint_hook
    from search.export.entry_points import export_from_storage

    folder = fresh_dir(root / f"seed{seed}")
    space = folder / "selection.py"
    space.write_text(SPACE.format(data=str(data), folds=args.folds, epochs=args.epochs, seed=seed))
    quiet = Console(file=io.StringIO())
    with contextlib.chdir(folder):
        request = RunRequest(space=str(space), trials=args.trials, progress=False, export=False)
        run(request, console=quiet, hooks=[checkpoint_hook])
        scores = export_from_storage("selection", mlflow=False, console=quiet).scores
    rows = {row.key: row for row in scores.rows}
    best = f"trial{scores.candidates[0]}"
    export = rows["export"]
    return {
        "selection": export.plain.accuracy,
        "best trial voting": rows[best].plain.accuracy,
        "best fold model": rows["best_fold_model"].plain.accuracy,
        "cv": export.cv.accuracy,
        "trials used": len(scores.trials),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.2, help="share of labels changed")
    args = p.parse_args()
    if args.quick:
        args.trials, args.epochs = min(args.trials, 3), 2
    threads = set_threads(args.threads)
    header(
        "ensemble selection vs the best trial and the best fold model, on a holdout",
        threads,
        [
            f"digits at 16 px, {args.noise:.0%} of labels changed, holdout 0.2, "
            f"{args.folds} folds x {args.epochs} epochs, {args.trials} trials per seed",
            "backbones test_vit/test_convnext/test_efficientnet, lr, dropout searched; "
            "metric accuracy; no pruning",
        ],
    )
    root = fresh_dir(args.workdir / "selection")
    data = noisy_digits(root / "data", args.noise, seed=0)
    results, start = [], time.perf_counter()
    for seed in range(args.seed, args.seed + args.seeds):
        results.append(one_seed(root, data, seed, args))
        print(f"seed {seed} done after {time.perf_counter() - start:.0f} s", flush=True)
    _report(results, args.seed)


def _report(results: list[dict[str, float]], first: int) -> None:
    rows = []
    for seed, r in enumerate(results, start=first):
        rows.append(
            [
                seed,
                r["selection"],
                r["best trial voting"],
                r["best fold model"],
                r["cv"],
                r["cv"] - r["selection"],
                int(r["trials used"]),
            ]
        )
    headers = [
        "seed",
        "selection (holdout)",
        "best trial voting",
        "best fold model",
        "CV (optimistic)",
        "CV - holdout",
        "trials used",
    ]
    print_table("accuracy of the export and its yardsticks", headers, rows)
    n = len(results)
    over_trial = sum(r["selection"] >= r["best trial voting"] for r in results)
    trial_goal = meets(over_trial / n, at_least=0.8)
    over_member = sum(r["selection"] >= r["best fold model"] for r in results)
    gaps = [r["cv"] - r["selection"] for r in results]
    goals = [
        ["selection >= best trial voting", f"{over_trial}/{n}", trial_goal],
        ["selection >= best fold model", f"{over_member}/{n}", meets(over_member / n, at_least=1)],
        ["mean CV - holdout gap", f"{statistics.mean(gaps):+.4f}", "reported"],
    ]
    print_table("goals", ["what", "value", "met"], goals)


if __name__ == "__main__":
    main()

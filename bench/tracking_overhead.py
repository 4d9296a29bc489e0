"""What MLflow tracking costs a study: the same seeded study with tracking off and on.

    .venv/bin/python bench/tracking_overhead.py [--trials 6] [--repeats 1]

Each variant runs in a fresh process and a fresh temporary folder (own study storage, image
cache and MLflow store), so neither inherits warm imports or caches from the other. The tracked
variant creates its MLflow store (./mlflow.db) before the clock starts, as a project has one
store for all its studies; that one-off cost is printed separately. Goal: ratio <= 1.05.
Both variants must find the same trial values (tracking observes, it never changes a study).
On a machine shared with other work, wall times swing with the load; the CPU-time ratio printed
beside them is steadier (use --repeats to keep each variant's best).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = """\
from search.space import choice, loguniform

data = "builtin:digits"
image_size = 64
folds = 3
epochs = 5
backbone = "test_vit"
augment = "light"
hflip = False
pruner = "none"
sampler = "random"
seed = 7
lr = loguniform(1e-3, 1e-2)
batch_size = choice(32, 64)
dropout = choice(0.0, 0.2)
"""


def child(variant: str, trials: int) -> dict:
    """Run the study once in the current folder; returns its wall time and trial values."""
    from search.context import RunRequest
    from search.engine.run import default_hooks, run
    from search.tracking.tracker import tracking_hook
    from search.tracking.writer import prepare_mlflow

    store_seconds = 0.0
    if variant == "mlflow":
        prepare_mlflow()
        started = time.perf_counter()
        import mlflow

        mlflow.MlflowClient().search_experiments()  # creates ./mlflow.db: once per project
        store_seconds = time.perf_counter() - started
    Path("bench_space.py").write_text(SPACE)
    hooks = [h for h in default_hooks() if h is not tracking_hook] + [tracking_hook]
    request = RunRequest(
        space="bench_space.py",
        overrides=[f"tracking={variant}"],
        trials=trials,
        progress=False,
        export=False,  # the export's own MLflow model logging is not what is measured here
    )
    started, cpu = time.perf_counter(), _cpu_seconds()
    run(request, hooks=hooks)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    import optuna

    study = optuna.load_study(
        study_name="bench_space", storage="sqlite:///studies/bench_space/study.db"
    )
    values = [round(t.value, 6) for t in study.trials if t.value is not None]
    return {"seconds": seconds, "cpu": cpu, "store_seconds": store_seconds, "values": values}


def _cpu_seconds() -> float:
    """CPU time of this process, all threads: steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(variant: str, trials: int) -> dict:
    """Run `child` in a fresh process and folder."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # MLflow's default store, inside the fresh folder
    env.pop("HPO_CACHE_DIR", None)
    with tempfile.TemporaryDirectory(prefix=f"hpo-bench-{variant}-") as folder:
        done = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                variant,
                "--trials",
                str(trials),
            ],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        sys.exit(f"{variant} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="trials per study (default 6)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant; best is kept")
    parser.add_argument("--child", choices=("none", "mlflow"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.trials)))
        return
    results: dict[str, list[dict]] = {"none": [], "mlflow": []}
    for _ in range(args.repeats):
        for variant in results:  # interleaved, so a change in machine load hits both
            results[variant].append(measure(variant, args.trials))
    best = {v: min(r, key=lambda r: r["seconds"]) for v, r in results.items()}
    off, on = best["none"]["seconds"], best["mlflow"]["seconds"]
    store = best["mlflow"]["store_seconds"]
    print(f"study: digits, test_vit 64 px, {args.trials} trials x 3 folds x 5 epochs, CPU")
    print(f"tracking=none    {off:8.1f} s")
    print(f"tracking=mlflow  {on:8.1f} s   (+ {store:.1f} s once to create ./mlflow.db)")
    print(f"ratio            {on / off:8.3f}   (goal <= 1.05)")
    print(f"ratio incl. store creation {(on + store) / off:.3f}")
    cpu_off, cpu_on = best["none"]["cpu"], best["mlflow"]["cpu"]
    print(f"CPU time         {cpu_off:.1f} s -> {cpu_on:.1f} s, ratio {cpu_on / cpu_off:.3f}")
    same = best["none"]["values"] == best["mlflow"]["values"]
    print(f"same trial values with and without tracking: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()

"""Trials per hour: `hpo run --workers 2` (1 thread each) against 1 worker of 1 thread.

Both runs use the same study settings (built-in digits, a fixed backbone and epoch budget,
no pruning, no tracking) in fresh folders, so every trial costs about the same. Throughput is
finished trials divided by the wall time of the whole command, start-up included; the second
column counts only from the first trial's start to the last trial's end.

    .venv/bin/python bench/parallel.py            # goal: ratio >= 1.7 on a 2-core machine
    .venv/bin/python bench/parallel.py --quick
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

SPACE = """\
from search.space import loguniform

data = "builtin:digits"
image_size = 32
hflip = False
augment = "light"
backbone = "test_resnet"
pruner = "none"
tracking = "none"
lr = loguniform(1e-3, 5e-3)
"""


def run_study(folder: Path, *, trials: int, workers: int, epochs: int, folds: int) -> dict:
    """Run one study in ``folder``; returns wall seconds and trials finished."""
    space = folder / "parallel.py"
    space.write_text(SPACE)
    cmd = [sys.executable, "-m", "search.cli", "run", str(space), f"--trials={trials}"]
    cmd += [f"epochs={epochs}", f"folds={folds}", "threads=1", "--no-export"]
    if workers > 1:
        cmd.append(f"--workers={workers}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    started = time.perf_counter()
    subprocess.run(cmd, cwd=folder, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    study = optuna.load_study(
        study_name="parallel", storage=f"sqlite:///{folder}/studies/parallel/study.db"
    )
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    span = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    return {"wall": wall, "span": span, "trials": len(done)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny budget (smoke test)")
    parser.add_argument("--trials", type=int, default=24)
    args = parser.parse_args()
    trials, epochs, folds = (4, 1, 2) if args.quick else (args.trials, 3, 3)
    results = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory(prefix=f"hpo-parallel-{workers}-") as folder:
            results[workers] = run_study(
                Path(folder), trials=trials, workers=workers, epochs=epochs, folds=folds
            )
    print(f"bench/parallel.py: {trials} trials, {folds} folds x {epochs} epochs, test_resnet")
    print(f"cores: {os.cpu_count()}; every worker runs torch with 1 thread")
    print(f"{'setup':<22}{'wall s':>9}{'trials/h':>11}{'trials/h (trials only)':>25}")
    rate = {}
    for workers, r in results.items():
        rate[workers] = (3600 * r["trials"] / r["wall"], 3600 * r["trials"] / r["span"])
        label = f"{workers} worker(s) x 1 thread"
        print(f"{label:<22}{r['wall']:>9.1f}{rate[workers][0]:>11.0f}{rate[workers][1]:>25.0f}")
    ratio = rate[2][0] / rate[1][0]
    ratio_span = rate[2][1] / rate[1][1]
    print(f"ratio 2 workers / 1 worker: {ratio:.2f} (trials only: {ratio_span:.2f}); goal >= 1.7")


if __name__ == "__main__":
    main()

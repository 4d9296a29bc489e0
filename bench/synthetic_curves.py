"""A synthetic table of learning curves in the schema of bench/curves/record.py, in seconds.

For developing and testing `bench/search_replay.py` without hours of recording: the same fixed
list of configurations as the recorder (corners, then Halton points of the task's space), each
with curves from a formula. A configuration's quality depends on every parameter (a choice
shifts it, a number is best somewhere in its range, on the distribution's own scale); a low
learning rate starts slowly; each fold has its own difficulty, and every score has noise.
The holdout score is the quality plus a little noise; a learning rate in the top tenth of its
range diverges in the second fold, as recorded rows with ``status == "diverged"`` do.

    .venv/bin/python bench/synthetic_curves.py --task digits --configs 120 --out /tmp/curves
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
import zlib
from typing import Any

import numpy as np
import pandas as pd

CURVES = Path(__file__).resolve().parent / "curves"


def _unit(dist: Any, value: Any) -> float:
    """``value``'s place in ``dist``'s range, on its own scale (log for a log range)."""
    low, high = float(dist.low), float(dist.high)
    if dist.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (float(value) - low) / (high - low) if high > low else 0.0


def _hashed(*parts: object) -> float:
    """A fixed number in [0, 1) for ``parts`` (the same in every run)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) / 2**32


def quality(space: Any, params: dict[str, Any]) -> float:
    """The expected final fold score of ``params`` (no noise)."""
    q = 0.75
    for name, value in params.items():
        dist = space.searched[name].distribution
        if hasattr(dist, "choices"):
            q += 0.06 * (_hashed(name, value) - 0.5)
        else:
            best = 0.2 + 0.6 * _hashed(name, "best")
            q -= 0.25 * (_unit(dist, value) - best) ** 2
    return q


def curves(space: Any, params: dict[str, Any], rng: np.random.Generator) -> list[list[float]]:
    """Folds x epochs validation scores of ``params``; NaN from a diverged fold on."""
    folds, epochs = space.settings.folds, space.config(params).epochs
    lr = space.searched["lr"].distribution if "lr" in params else None
    speed = _unit(lr, params["lr"]) if lr else 0.5
    tau = 0.15 + 0.6 * (1.0 - speed)  # a low learning rate needs more of its schedule
    shape = [1 - math.exp(-(e + 1) / epochs / tau) for e in range(epochs)]
    scores = []
    for fold in range(folds):
        final = quality(space, params) + 0.01 * (_hashed("fold", fold) - 0.5)
        final += rng.normal(0.0, 0.008)
        noisy = [final * s / shape[-1] + rng.normal(0.0, 0.01) for s in shape]
        scores.append([min(max(v, 0.0), 1.0) for v in noisy])
    if speed > 0.9:  # diverges in the second fold: the recorder keeps the first
        scores[1:] = [[math.nan] * epochs for _ in scores[1:]]
    return scores


def synthetic_table(task: str, space_path: Path, *, configs: int, seed: int = 0) -> pd.DataFrame:
    """``configs`` rows of the recorder's configuration list for ``space_path``, as a table."""
    from bench.curves.record import configurations
    from search.space.spacefile import load_space

    space = load_space(space_path)
    rng = np.random.default_rng(seed)
    rows = []
    for config_id, params in zip(range(configs), configurations(space), strict=False):
        scores = curves(space, params, rng)
        diverged = any(math.isnan(s) for fold in scores for s in fold)
        holdout = (
            [math.nan] * 2 if diverged else list(quality(space, params) + rng.normal(0, 0.005, 2))
        )
        rows.append(
            {
                "task": task,
                "config_id": config_id,
                "params": json.dumps(params, sort_keys=True),
                "config": json.dumps(space.config(params).to_dict(), sort_keys=True),
                "fold_scores": scores,
                "epoch_seconds": [[1.0] * len(fold) for fold in scores],
                "holdout_scores": holdout,
                "holdout": float(np.mean(holdout)),
                "status": "diverged" if diverged else "ok",
            }
        )
    return pd.DataFrame(rows)


def write(task: str, out: Path, *, configs: int, seed: int = 0) -> Path:
    """Write ``out/<task>.parquet`` for the recorded task's space; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{task}.parquet"
    synthetic_table(task, CURVES / f"{task}_space.py", configs=configs, seed=seed).to_parquet(
        path, index=False
    )
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: write one synthetic table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits", help="a task with bench/curves/<task>_space.py")
    p.add_argument("--configs", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder of <task>.parquet")
    args = p.parse_args(argv)
    print(write(args.task, args.out, configs=args.configs, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Record learning curves: every configuration of a fixed list, every fold, every epoch.

A tabular benchmark of hpo's own kind of trial (k folds x epochs), as LCBench or HPOBench's
tabular sets are for theirs: each configuration is trained once on every fold for its whole
schedule, then on all cross-validation images with two training seeds and scored on a clean
holdout. `bench/search_replay.py` replays search methods on the table many times.

The configurations are a fixed, seeded list drawn over the whole space: first every
combination of the unconditional categorical choices (the corners), then scrambled Halton
points (`search.study.samplers.halton_point`). Configuration ``i`` is always the same, so a
recording resumes where it stopped: rows already in the table are skipped, and the table is
rewritten atomically after every configuration (a kill loses at most the one in progress).

Tasks (``--task``):

- ``cifar10``: the CIFAR-10 subset in ``../shared/data`` (real photos, 32 px): 200 images per
  class of train/ for cross-validation (3 folds x 6 epochs), all 2,000 of test/ as the holdout;
  space `bench/curves/cifar10_space.py`.
- ``digits``: the noisy-label digits of `bench/search_quality.py` (500 CV images, a fifth with
  random labels, 1,297 clean holdout images, 16 px, 3 folds x 4 epochs); space
  `bench/curves/digits_space.py`.

    .venv/bin/python bench/curves/record.py --task cifar10 --configs 300 --hours 2.5

Several recorders may share one table, one core each: start the same command twice. Each
recorder claims the lowest configuration that is neither recorded nor claimed by a live recorder
(the claims sit beside the table, under the lock its writes take), so the work is shared however
unequal the configurations' costs are, and a killed recorder's claim is taken over by the next.

Columns of ``bench/curves/<task>.parquet``: ``task``, ``config_id``, ``params`` (JSON of the
searched values), ``config`` (JSON of the whole TrainConfig), ``fold_scores`` (folds x epochs
validation accuracy), ``epoch_seconds`` (folds x epochs), ``holdout_scores`` (last-epoch holdout
accuracy per training seed), ``holdout`` (their mean), ``status`` (``ok`` or ``diverged``),
``commit``, ``machine``, ``recorded`` (UTC time).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import datetime
import itertools
import json
import math
import socket
import subprocess
import tarfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench import common

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10-subset.tar.gz"
SEEDS = (0, 1)  # training seeds of the holdout score
HALTON_SEED = 0


@dataclass(frozen=True)
class Task:
    """A recorded task: its space file and written data (CV rows first, then the holdout)."""

    name: str
    space: Path
    csv: Path
    cv: int
    holdout: int


# --- the tasks ------------------------------------------------------------------------------------


def cifar10_task(folder: Path, *, per_class: int = 200) -> Task:
    """``per_class`` train/ images of each class for CV, then every test/ image as holdout."""
    root = folder / "cifar10-subset"
    if not root.is_dir():
        if not CIFAR.is_file():
            raise SystemExit(f"{CIFAR} is missing: the cifar10 task needs the shared data")
        with tarfile.open(CIFAR) as tar:
            tar.extractall(folder, filter="data")
    cv = [
        f"{path},{cls.name}"
        for cls in sorted((root / "train").iterdir())
        for path in sorted(cls.glob("*.jpg"))[:per_class]
    ]
    test = [
        f"{path},{cls.name}"
        for cls in sorted((root / "test").iterdir())
        for path in sorted(cls.glob("*.jpg"))
    ]
    csv = folder / "cifar10.csv"
    csv.write_text("path,label\n" + "\n".join(cv + test) + "\n")
    return Task("cifar10", HERE / "cifar10_space.py", csv, len(cv), len(test))


def digits_task(folder: Path) -> Task:
    """The noisy-label digits of bench/search_quality.py at its default sizes."""
    from bench.search_quality import make_task

    made = make_task(folder / "digits", images=500, holdout=1297, noise=0.2, seed=0)
    return Task("digits", HERE / "digits_space.py", made.all_csv, made.cv, made.holdout)


TASKS = {"cifar10": cifar10_task, "digits": digits_task}


# --- the configurations ---------------------------------------------------------------------------


def configurations(space: Any) -> Iterator[dict[str, Any]]:
    """The task's configurations in their fixed order: corners first, then Halton points.

    Each is the dict of searched values a trial of ``space`` would have (inactive conditional
    parameters left out).
    """
    from optuna.distributions import CategoricalDistribution

    from search.study.samplers import halton_point

    dists = {name: s.distribution for name, s in space.searched.items()}
    corners = [
        name
        for name, s in space.searched.items()
        if isinstance(s.distribution, CategoricalDistribution) and not s.when
    ]
    choices = [dists[name].choices for name in corners]
    index = 0
    for combination in itertools.product(*choices):
        point = halton_point(dists, seed=HALTON_SEED, index=index)
        yield _active(space, {**point, **dict(zip(corners, combination, strict=True))})
        index += 1
    while True:
        yield _active(space, halton_point(dists, seed=HALTON_SEED, index=index))
        index += 1


def _active(space: Any, point: dict[str, Any]) -> dict[str, Any]:
    """The values of ``point`` whose conditions hold, in the space's order."""
    resolved = dict(space.fixed)
    params = {}
    for name, searched in space.searched.items():
        if searched.active({**resolved, **params}):
            params[name] = point[name]
    return params


# --- training -------------------------------------------------------------------------------------


class Recorder:
    """Trains configurations of one task and appends them to its table."""

    def __init__(self, task: Task, table: Path) -> None:
        from search.space.spacefile import load_space
        from search.study.splits import assign_folds
        from trainer.cache import cached_images
        from trainer.sources import load_table
        from trainer.types import Split

        self.task, self.table = task, table
        self.space = load_space(task.space, [f"data={task.csv}"])
        size = self.space.fixed["image_size"]
        self.images = cached_images(load_table(str(task.csv)), size, progress=False)
        cv = np.arange(task.cv)
        fold_of = assign_folds(
            self.images.labels[cv], None, self.images.classes,
            folds=self.space.settings.folds, holdout=0.0, seed=0,
        )  # fmt: skip
        self.splits = [
            Split(f, cv[fold_of != f], cv[fold_of == f]) for f in range(self.space.settings.folds)
        ]
        self.final = Split(0, cv, np.arange(task.cv, task.cv + task.holdout))
        self.commit = _commit()
        self.machine = common.machine()

    def record(self, config_id: int, params: dict[str, Any]) -> dict[str, Any]:
        """Train one configuration on every fold and on all CV images; its table row."""
        from trainer.types import Diverged

        config = self.space.config(params).replace(patience=None, threads=1, num_workers=0)
        epochs = config.epochs
        scores, seconds, status = [], [], "ok"
        try:
            for split in self.splits:
                history = self._fit(config, split).history
                scores.append([row.score for row in history])
                seconds.append([row.seconds for row in history])
            holdout = [self._fit(config.replace(seed=s), self.final).history[-1].score
                       for s in SEEDS]  # fmt: skip
        except Diverged:
            status = "diverged"
            scores = [_padded(row, epochs) for row in scores]
            scores += [[math.nan] * epochs] * (len(self.splits) - len(scores))
            seconds = [_padded(row, epochs) for row in seconds]
            seconds += [[math.nan] * epochs] * (len(self.splits) - len(seconds))
            holdout = [math.nan] * len(SEEDS)
        return {
            "task": self.task.name,
            "config_id": config_id,
            "params": json.dumps(params, sort_keys=True),
            "config": json.dumps(config.to_dict(), sort_keys=True),
            "fold_scores": scores,
            "epoch_seconds": seconds,
            "holdout_scores": holdout,
            "holdout": float(np.mean(holdout)),
            "status": status,
            "commit": self.commit,
            "machine": self.machine,
            "recorded": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }

    def _fit(self, config: Any, split: Any) -> Any:
        from trainer.loop import fit

        return fit(config, self.images, split)


def _padded(row: list[float], length: int) -> list[float]:
    return list(row) + [math.nan] * (length - len(row))


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --- the table ------------------------------------------------------------------------------------


def read_table(path: Path) -> pd.DataFrame:
    """The rows recorded so far (an empty frame when none)."""
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_parquet(path)


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """Replace ``path`` with ``frame`` atomically (a kill leaves the old or the new table)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.sort_values("config_id").to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _lock(path: Path) -> Any:
    """An open lock file beside ``path``, held exclusively (closing it releases the lock)."""
    import fcntl

    lock = open(path.with_name(f".{path.name}.lock"), "w")  # noqa: SIM115 - closed by the caller
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def append_row(path: Path, row: dict[str, Any]) -> pd.DataFrame:
    """Add ``row`` to the table on disk and drop this recorder's claim on it, under the lock.

    Returns:
        The table as written (every recorder's rows so far).
    """
    with _lock(path):
        frame = read_table(path)
        frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
        frame = frame.drop_duplicates("config_id", keep="first")
        write_table(path, frame)
        claims = _claims(path)
        if claims.pop(str(row["config_id"]), None) is not None:
            _write_claims(path, claims)
    return frame


def claim_next(path: Path, configs: int) -> int | None:
    """Claim the lowest id below ``configs`` that is neither in the table nor claimed.

    A claim is ``{"host", "pid"}``; one whose process on this host is gone counts as free, so
    a killed recorder's configuration goes to the next recorder that asks.

    Returns:
        The claimed id, or None when every configuration is recorded or claimed.
    """
    with _lock(path):
        frame = read_table(path)
        done = set(frame["config_id"]) if len(frame) else set()
        claims = {k: c for k, c in _claims(path).items() if _alive(c)}
        free = next((i for i in range(configs) if i not in done and str(i) not in claims), None)
        if free is not None:
            claims[str(free)] = {"host": socket.gethostname(), "pid": os.getpid()}
        _write_claims(path, claims)
        return free


def release(path: Path, config_id: int) -> None:
    """Drop this recorder's claim on ``config_id`` without recording it."""
    with _lock(path):
        claims = _claims(path)
        claims.pop(str(config_id), None)
        _write_claims(path, claims)


def _claims_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.claims.json")


def _claims(path: Path) -> dict[str, dict[str, Any]]:
    file = _claims_path(path)
    return json.loads(file.read_text()) if file.is_file() else {}


def _write_claims(path: Path, claims: dict[str, dict[str, Any]]) -> None:
    file = _claims_path(path)
    if claims:
        file.write_text(json.dumps(claims, sort_keys=True))
    else:
        file.unlink(missing_ok=True)


def _alive(claim: dict[str, Any]) -> bool:
    """Whether a claim's recorder may still be running (one on another host is assumed so)."""
    if claim.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(task: Task, table: Path, *, configs: int, deadline: float) -> int:
    """Record configurations ``0..configs-1`` not yet in ``table`` until ``deadline``.

    Other recorders may work on the same table at once: each configuration is claimed first.

    Returns:
        How many configurations this call recorded.
    """
    recorder = Recorder(task, table)
    listed = list(itertools.islice(configurations(recorder.space), configs))
    recorded = 0
    while time.time() <= deadline:
        config_id = claim_next(table, configs)
        if config_id is None:
            break
        started = time.perf_counter()
        try:
            row = recorder.record(config_id, listed[config_id])
        except BaseException:
            release(table, config_id)
            raise
        frame = append_row(table, row)
        recorded += 1
        print(
            f"{task.name} config {config_id}: cv {_cv(row):.3f} holdout {row['holdout']:.3f} "
            f"({row['status']}, {time.perf_counter() - started:.0f} s); "
            f"{len(frame)}/{configs} in the table",
            flush=True,
        )
    return recorded


def _cv(row: dict[str, Any]) -> float:
    """A row's CV score: the mean over folds of each fold's best epoch."""
    return float(np.mean([max(scores) if scores else math.nan for scores in row["fold_scores"]]))


def _workdir(base: Path, task: str) -> Path:
    """The first ``base/<task>-K`` no other recorder holds; held until this process ends.

    Each recorder unpacks the data and builds its image cache in a folder of its own.
    """
    import fcntl

    for k in itertools.count():
        folder = base / f"{task}-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        hold = open(folder / ".in-use", "w")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(hold, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            hold.close()
            continue
        _HELD.append(hold)
        return folder
    raise AssertionError("unreachable")


_HELD: list[Any] = []


def main(argv: list[str] | None = None) -> int:
    """Command line: record one task's configurations, resuming its table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--configs", type=int, default=300, help="configurations in the table")
    p.add_argument("--hours", type=float, default=3.0, help="stop starting new ones after this")
    p.add_argument("--out", type=Path, default=HERE, help="folder of <task>.parquet")
    p.add_argument(
        "--workdir", type=Path, default=Path("/tmp/hpo-curves"), help="data and image cache"
    )
    args = p.parse_args(argv)
    common.set_threads(1)  # recorded seconds are one thread's; 1 of 2 cores left for others
    warnings.filterwarnings("ignore")
    args.workdir = _workdir(args.workdir, args.task)
    os.chdir(args.workdir)  # the image cache goes under studies/ there
    task = TASKS[args.task](args.workdir)
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out.resolve() / f"{args.task}.parquet"
    print(f"recording {args.task} into {table}; {common.machine()}", flush=True)
    deadline = time.time() + args.hours * 3600
    recorded = run(task, table, configs=args.configs, deadline=deadline)
    total = len(read_table(table))
    print(f"recorded {recorded} this time; {total}/{args.configs} in {table}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

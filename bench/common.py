"""Small helpers shared by the benchmark scripts: threads, timing, tables, machine, hpo runs.

Benchmarks report; they never assert timings. Each script prints the machine it ran on, the
torch thread count it chose, and a plain table of ratios next to their goals.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
_ENV = {"HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


# --- command line and machine ------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: usable cores)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "hpo-bench",
        help="where photos, caches and studies go (default: $TMPDIR/hpo-bench)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def usable_cores() -> int:
    """CPU cores this process may run on (honours affinity masks)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads deliberately (default: usable cores) and return the count."""
    count = threads or usable_cores()
    torch.set_num_threads(count)
    return count


def machine() -> str:
    """One line naming the CPU, cores, GPU, library versions, load and date."""
    cpu = _cpu_model() or platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    today = datetime.date.today().isoformat()
    return (
        f"{cpu}; {usable_cores()} usable cores; {gpu}; torch {torch.__version__}; "
        f"python {platform.python_version()}; load average {load}; {today}"
    )


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def header(title: str, threads: int, notes: Iterable[str] = ()) -> None:
    """Print what is measured, where, and with how many threads."""
    print(f"== {title}")
    print(f"machine: {machine()}")
    print(f"torch threads: {threads} (set by the benchmark with torch.set_num_threads)")
    for note in notes:
        print(f"note: {note}")
    print()


# --- timing ------------------------------------------------------------------------------------


def seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of one call to ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    runs: dict[str, Callable[[], object]], *, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Time every run ``repeats`` times, round-robin, after ``warmup`` untimed rounds.

    Rounds alternate between the runs (and rotate their order) so that a change of machine load
    during the benchmark hits every run alike instead of whichever happened to go last.
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(seconds(runs[name]))
    return times


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is not positive."""
    return numerator / denominator if denominator > 0 else float("nan")


def meets(value: float, *, at_most: float | None = None, at_least: float | None = None) -> str:
    """ "yes" or "no" for a goal; benchmarks report whether a goal is met, they never assert."""
    if value != value:  # NaN
        return "n/a"
    ok = (at_most is None or value <= at_most) and (at_least is None or value >= at_least)
    return "yes" if ok else "no"


# --- tables ------------------------------------------------------------------------------------


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: left-aligned text, right-aligned numbers."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(headers), rule, *(line(r) for r in cells)])


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print `table` followed by a blank line."""
    print(table(title, headers, rows))
    print()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def cell(value: object) -> str:
    """A table cell: floats with 3 decimals (1 from 100 up), NaN as n/a."""
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


# --- places and subprocesses ---------------------------------------------------------------------


def fresh_dir(path: Path) -> Path:
    """``path`` emptied (or created) and absolute."""
    path = path.absolute()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def child_env(threads: int) -> dict[str, str]:
    """Environment for benchmark subprocesses: offline hub, no update checks, fixed threads."""
    env = {**os.environ, **_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # OpenMP reads this before torch starts; both tools then see the same thread count.
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def hpo_command() -> list[str]:
    """How to start the `hpo` CLI from this interpreter's environment."""
    script = Path(sys.executable).with_name("hpo")
    return [str(script)] if script.exists() else [sys.executable, "-m", "search.cli"]


@dataclass(frozen=True)
class Finished:
    """A subprocess that ran to its end: wall seconds, exit status and where its output is."""

    seconds: float
    returncode: int
    log: Path

    def check(self, what: str) -> None:
        """Exit with the tail of the log when the subprocess failed."""
        if self.returncode != 0:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
            sys.exit(f"{what} failed with exit status {self.returncode}; log {self.log}:\n{tail}")


def run_logged(command: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path) -> Finished:
    """Run ``command`` with stdout and stderr in ``log``; time it from start to exit."""
    with open(log, "w") as out:
        start = time.perf_counter()
        code = subprocess.call(list(command), cwd=cwd, env=env, stdout=out, stderr=out)
        return Finished(time.perf_counter() - start, code, log)


def run_hpo(
    space: Path,
    *,
    study: str,
    trials: int,
    overrides: Sequence[str],
    cwd: Path,
    threads: int,
) -> Finished:
    """``hpo run SPACE --trials N --study S key=value...`` in ``cwd`` (its studies/ go there)."""
    command = [
        *hpo_command(),
        "run",
        str(space.absolute()),
        "--trials",
        str(trials),
        "--study",
        study,
        *overrides,
        f"threads={threads}",
    ]
    return run_logged(command, cwd=cwd, env=child_env(threads), log=cwd / f"{study}.log")


@dataclass(frozen=True)
class StudySummary:
    """What a finished study holds, read back from its Optuna storage."""

    best: float
    best_std: float
    best_number: int
    complete: int
    pruned: int
    failed: int
    epochs: int

    @property
    def finished(self) -> int:
        """Complete plus pruned trials."""
        return self.complete + self.pruned


def read_study(cwd: Path, study: str) -> StudySummary:
    """Summarise study ``study`` from ``cwd/studies/<study>/study.db``."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{cwd.absolute() / 'studies' / study / 'study.db'}"
    loaded = optuna.load_study(study_name=study, storage=url)
    trials = loaded.get_trials(deepcopy=False)
    count = lambda state: sum(t.state == state for t in trials)  # noqa: E731
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = loaded.best_trial if complete else None
    return StudySummary(
        best=best.value if best else float("nan"),
        best_std=float(best.user_attrs.get("score_std", float("nan"))) if best else float("nan"),
        best_number=best.number if best else -1,
        complete=count(TrialState.COMPLETE),
        pruned=count(TrialState.PRUNED),
        failed=count(TrialState.FAIL),
        epochs=sum(int(t.user_attrs.get("epochs", 0)) for t in trials),
    )


# --- training steps ----------------------------------------------------------------------------


class BareLoop:
    """The minimal PyTorch training step every benchmark compares hpo against.

    ``for x, y in batches: zero_grad; loss = criterion(model(x), y); backward; step`` and
    nothing else: no normalisation, no loss bookkeeping, no schedule, no hooks.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.criterion = torch.nn.CrossEntropyLoss()
        self.model.train()

    def epoch(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Train on every batch once."""
        for x, y in batches:
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(x), y)
            loss.backward()
            self.optimizer.step()

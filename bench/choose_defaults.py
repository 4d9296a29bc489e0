"""Applies the rule written down before the replays for choosing hpo's search defaults.

Reads the figures that ``bench/search_replay.py --json`` wrote for seeds 0-49 (seeds from 50
on are for reporting and are refused), one file per task or one with every task. The
candidates are ``hpo`` (today's defaults) and each ``hpo:NAME`` variant replayed on every
task. They are ranked, in this order (docs/benchmarks.md, "How the defaults will be chosen"):

1. the compute to reach random search's 3B pick on the worse task (lower first, "not reached"
   last);
2. the median pick at B summed over the tasks (higher first);
3. the top-5% false-prune rate on the worse task (lower first).

A candidate whose median at B is more than 0.005 below ``hpo``'s on any task is out. The first
of the rest is the new default. ::

    .venv/bin/python bench/choose_defaults.py digits-choose.json cifar10-choose.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

DEFAULT = "hpo"
MARGIN = 0.005  # below the default's median at B on a task by more than this: out
REPORT_SEEDS = 50  # seeds from here on are for reporting, never for choosing


class Refused(ValueError):
    """The figures cannot be used for choosing; the message says why and what to do."""


def load(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Every task's figures from ``paths`` (a task in two files is refused)."""
    tasks: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            found = json.loads(path.read_text())["tasks"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise Refused(
                f"{path}: not a bench/search_replay.py --json file ({error}); "
                "pass the file that --json wrote."
            ) from None
        for task, figures in found.items():
            if task in tasks:
                raise Refused(f"{path}: task {task!r} is in two files; pass each task once.")
            first = figures.get("first_seed")
            if first is not None and first + figures["seeds"] > REPORT_SEEDS:
                raise Refused(
                    f"{path}: task {task!r} was replayed on seeds {first}.."
                    f"{first + figures['seeds'] - 1}; choose on seeds below {REPORT_SEEDS} "
                    "(--first-seed 0 --seeds 50)."
                )
            tasks[task] = figures
    return tasks


def _worst(values: list[float | None]) -> float:
    """The largest value; null (not reached, or never sampled) counts as the worst."""
    return max(math.inf if v is None else v for v in values)


def rank(tasks: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The candidates in the rule's order, and those out by the margin (each with its keys)."""
    if not tasks:
        raise Refused("no task in the files; pass the files bench/search_replay.py --json wrote.")
    methods = [t["methods"] for t in tasks.values()]
    missing = [task for task, t in tasks.items() if DEFAULT not in t["methods"]]
    if missing:
        raise Refused(
            f"{', '.join(missing)}: no '{DEFAULT}' method to compare with; "
            f"replay with --methods {DEFAULT} and the variants."
        )
    names = [
        name
        for name in methods[0]
        if (name == DEFAULT or name.startswith(f"{DEFAULT}:")) and all(name in m for m in methods)
    ]
    kept, out = [], []
    for name in names:
        rows = [m[name] for m in methods]
        row = {
            "method": name,
            "compute": _worst([r["compute_to_random_3B"] for r in rows]),
            "score_sum": sum(r["score_at_B"] for r in rows),
            "top5": _worst([r.get("false_prune_rate_top5") for r in rows]),
            "scores": {task: t["methods"][name]["score_at_B"] for task, t in tasks.items()},
            "settings": next(
                (t["variants"][name] for t in tasks.values() if name in t.get("variants", {})),
                "",
            ),
        }
        behind = [
            task
            for task, t in tasks.items()
            if t["methods"][name]["score_at_B"] < t["methods"][DEFAULT]["score_at_B"] - MARGIN
        ]
        (out if behind else kept).append({**row, "behind_on": behind})
    kept.sort(key=lambda r: (r["compute"], -r["score_sum"], r["top5"]))
    return kept, out


def _fmt(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:.2f}B"


def main(argv: list[str] | None = None) -> int:
    """Command line: print the ranking and the chosen defaults."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("figures", nargs="+", type=Path, help="bench/search_replay.py --json files")
    args = p.parse_args(argv)
    try:
        tasks = load(args.figures)
        kept, out = rank(tasks)
    except Refused as error:
        print(error, file=sys.stderr)
        return 2
    names = list(tasks)
    print(f"tasks: {', '.join(names)}; {len(kept) + len(out)} candidates")
    print(
        "rank | method | compute to random's 3B, worse task | median at B "
        f"({' + '.join(names)}) | top-5% false prunes, worse task"
    )
    for i, r in enumerate(kept, 1):
        scores = " + ".join(f"{r['scores'][t]:.3f}" for t in names)
        top5 = "n/a" if math.isinf(r["top5"]) else f"{r['top5']:.3f}"
        print(f"{i} | {r['method']} | {_fmt(r['compute'])} | {scores} | {top5}")
    for r in out:
        print(
            f"out | {r['method']} | median at B more than {MARGIN} below {DEFAULT}'s "
            f"on {', '.join(r['behind_on'])}"
        )
    best = kept[0]
    if best["method"] == DEFAULT:
        print(f"chosen: {DEFAULT}, today's defaults stay")
    else:
        print(f"chosen: {best['method']} ({best['settings'] or 'settings as replayed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bench/choose_defaults.py: the rule written down before the replays, applied to their figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.choose_defaults import Refused, load, rank

REPO = Path(__file__).resolve().parents[2]


def figures(score: float, compute: float | None, top5: float | None) -> dict:
    return {"score_at_B": score, "compute_to_random_3B": compute, "false_prune_rate_top5": top5}


def task(methods: dict, first_seed: int | None = 0, variants: dict | None = None) -> dict:
    out = {"seeds": 50, "methods": methods, "variants": variants or {}}
    if first_seed is not None:
        out["first_seed"] = first_seed
    return out


def write(tmp_path: Path, name: str, tasks: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"tasks": tasks}))
    return path


def test_the_rule_ranks_by_the_worse_tasks_compute_then_the_summed_score_then_false_prunes():
    tasks = {
        "a": task(
            {
                "random": figures(0.90, 2.9, 0.0),
                "hpo": figures(0.90, None, 0.2),
                "hpo:fast_on_a": figures(0.91, 0.5, 0.1),  # but not reached on b: last
                "hpo:even": figures(0.90, 1.5, 0.1),
                "hpo:even_better": figures(0.91, 1.5, 0.3),
                "hpo:even_fewer_prunes": figures(0.91, 1.5, 0.05),
                "hpo:worse": figures(0.894, 0.3, 0.0),  # 0.006 below hpo's: out
                "hpo:only_on_a": figures(0.99, 0.1, 0.0),  # not replayed on b: no candidate
            },
            variants={"hpo:even_better": "pruner_p=0.2"},
        ),
        "b": task(
            {
                "hpo": figures(0.50, 2.0, 0.1),
                "hpo:fast_on_a": figures(0.52, None, 0.0),
                "hpo:even": figures(0.50, 1.0, 0.0),
                "hpo:even_better": figures(0.50, 1.2, 0.0),
                "hpo:even_fewer_prunes": figures(0.50, 0.9, 0.1),
                "hpo:worse": figures(0.60, 0.3, 0.0),
            }
        ),
    }
    kept, out = rank(tasks)
    assert [r["method"] for r in kept] == [
        "hpo:even_fewer_prunes",  # 1.5B on the worse task, 1.41, worst top-5% 0.10
        "hpo:even_better",  # 1.5B, 1.41, 0.30
        "hpo:even",  # 1.5B, 1.40
        "hpo:fast_on_a",  # not reached on b; the sum (1.43) puts it before the default
        "hpo",  # not reached on a, 1.40
    ]
    assert kept[1]["settings"] == "pruner_p=0.2"
    assert [(r["method"], r["behind_on"]) for r in out] == [("hpo:worse", ["a"])]


def test_seeds_for_reporting_and_files_without_the_default_are_refused(tmp_path):
    reporting = write(tmp_path, "r.json", {"a": task({"hpo": figures(0.9, 1.0, 0)}, 50)})
    with pytest.raises(Refused, match="choose on seeds below 50"):
        load([reporting])
    no_default = write(tmp_path, "n.json", {"a": task({"hpo:x": figures(0.9, 1.0, 0)})})
    with pytest.raises(Refused, match="no 'hpo' method"):
        rank(load([no_default]))
    twice = write(tmp_path, "t.json", {"a": task({"hpo": figures(0.9, 1.0, 0)})})
    with pytest.raises(Refused, match="in two files"):
        load([twice, twice])


def test_the_command_prints_the_choice_and_refuses_bad_files_with_exit_status_2(tmp_path):
    script = [sys.executable, str(REPO / "bench" / "choose_defaults.py")]
    digits = write(
        tmp_path,
        "digits.json",
        {"digits": task({"hpo": figures(0.93, None, 0.2), "hpo:f": figures(0.93, 2.0, 0.1)},
                        variants={"hpo:f": "pruner_epoch_rungs=()"})},
    )  # fmt: skip
    cifar = write(
        tmp_path,
        "cifar10.json",
        {"cifar10": task({"hpo": figures(0.49, 0.5, 0.1), "hpo:f": figures(0.49, 0.4, 0.0)})},
    )
    done = subprocess.run([*script, str(digits), str(cifar)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "chosen: hpo:f (pruner_epoch_rungs=())" in done.stdout
    assert "1 | hpo:f | 2.00B | 0.930 + 0.490 | 0.100" in done.stdout
    (tmp_path / "bad.json").write_text("{")
    bad = subprocess.run([*script, str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a bench/search_replay.py --json file" in bad.stderr
    assert "Traceback" not in bad.stderr

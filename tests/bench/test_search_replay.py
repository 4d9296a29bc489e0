"""bench/search_replay.py: hpo's search replayed on a table of learning curves (synthetic here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from bench.replay_table import CURVES, Curves
from bench.synthetic_curves import write
from search.space.spacefile import load_space

REPO = Path(__file__).resolve().parents[2]


def table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "params": [json.dumps(r, sort_keys=True) for r in rows],
            "fold_scores": [[[0.5, 0.6]] * 3] * len(rows),
            "holdout": [0.6] * len(rows),
        }
    )


def test_a_sampled_configuration_maps_to_the_nearest_on_its_own_scales():
    space = load_space(CURVES / "digits_space.py")
    base = {"backbone": "test_resnet", "batch_size": 32, "dropout": 0.2, "loss": "ce"}
    base["weight_decay"] = 1e-3
    curves = Curves(
        table(
            [
                {**base, "lr": 1e-4},
                {**base, "lr": 1e-2},
                {**base, "lr": 2e-3, "backbone": "test_vit"},  # the same lr, another choice
                {**base, "lr": 2e-3, "loss": "focal", "focal_gamma": 2.0},
            ]
        ),
        space,
    )
    # lr 2e-3 is nearer 1e-4 on a linear scale, nearer 1e-2 on the log scale of its range.
    assert curves.nearest({**base, "lr": 2e-3}) == 1
    assert curves.nearest({**base, "lr": 2e-3, "backbone": "test_vit", "dropout": 0.5}) == 2
    assert curves.nearest({**base, "lr": 1e-4, "loss": "focal", "focal_gamma": 0.5}) == 3
    # No row has label smoothing: the nearest with one choice different.
    assert (
        curves.nearest({**base, "lr": 1e-2, "loss": "label_smoothing", "label_smoothing": 0.1}) == 1
    )
    config = space.config({**base, "lr": 1e-2})
    assert curves.params_of(config) == {**base, "lr": 1e-2}  # focal_gamma is inactive


def test_quick_replay_writes_every_method_figures_in_the_issue_schema(tmp_path):
    write("digits", tmp_path, configs=60)
    out = tmp_path / "replay.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "search_replay.py"), "--quick",
         "--curves", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compute to reach random's median pick at 3B" in done.stdout
    task = json.loads(out.read_text())["tasks"]["digits"]
    assert task["seeds"] == 3
    methods = task["methods"]
    wanted = {"hpo", "random", "tpe", "sha", "hyperband", "wilcoxon", "forgiving", "one_epoch"}
    assert set(methods) == wanted
    for figures in methods.values():
        assert 0.3 < figures["score_at_B"] < 1.0
        low, high = figures["compute_to_random_3B_ci"]
        assert low is None or high is None or low <= high
    # Random search reaches its own pick at 3B by 3B, and never prunes.
    assert methods["random"]["compute_to_random_3B"] <= 3.0
    assert methods["random"]["false_prune_rate_top5"] in (0.0, None)
    assert methods["tpe"]["false_prune_rate_top5"] in (0.0, None)


def test_a_missing_table_is_one_sentence_and_exit_status_2(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "search_replay.py"), "--curves", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "record one with bench/curves/record.py" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_variant_replays_hpo_with_settings_changed_and_a_bad_one_is_refused(tmp_path):
    write("digits", tmp_path, configs=40)
    out = tmp_path / "replay.json"
    command = [sys.executable, str(REPO / "bench" / "search_replay.py"), "--quick",
               "--curves", str(tmp_path), "--methods", "hpo", "--json", str(out)]  # fmt: skip
    variant = ["--variant", "none=pruner=none", "--jobs", "2"]
    done = subprocess.run([*command, *variant], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    task = json.loads(out.read_text())["tasks"]["digits"]
    assert task["first_seed"] == 50 and task["variants"] == {"hpo:none": "pruner=none"}
    methods = task["methods"]
    assert set(methods) == {"random", "hpo", "hpo:none"}
    assert methods["hpo:none"]["false_prune_rate_top5"] in (0.0, None)  # it never prunes
    bad = subprocess.run([*command, "--variant", "p05"], capture_output=True, text=True)
    assert bad.returncode == 2 and "NAME=SETTING=VALUE" in bad.stderr


def test_a_variant_may_change_the_samplers_start_up_and_mix():
    from bench.search_replay import variant_method
    from search.study.samplers import Staged, build_sampler

    method = variant_method("startup=5;explore_every=none;pruner_p=0.05")
    assert method.overrides == ("pruner_p=0.05",)
    space = load_space(CURVES / "digits_space.py")
    dists = {name: s.distribution for name, s in space.searched.items()}
    sampler = build_sampler(
        "tpe", seed=0, process_seed=0, grouped=False, space=dists, **dict(method.staged)
    )
    assert isinstance(sampler, Staged)
    assert [sampler.explores(n) for n in (4, 5, 8, 50)] == [True, False, False, False]
    assert sampler.inner._n_startup_trials == 5
    default = build_sampler("tpe", seed=0, process_seed=0, grouped=False, space=dists)
    assert [default.explores(n) for n in (9, 10, 11)] == [True, False, True]


def test_a_bad_sampler_variant_is_refused_with_the_fix(tmp_path):
    command = [sys.executable, str(REPO / "bench" / "search_replay.py"), "--quick",
               "--curves", str(tmp_path), "--variant", "s=startup=0"]  # fmt: skip
    bad = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "startup takes a whole number of trials of at least 1, not '0'" in bad.stderr
    assert "Traceback" not in bad.stderr

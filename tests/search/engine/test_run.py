"""`hpo run` end to end on tiny data: trials, resume, identity checks, pruning, status."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search.cli.main import main
from search.context import RunRequest
from search.engine.run import prepare, run
from search.space.settings import StudySettings
from search.study.storage import StudyError
from tests.support.readers import study_or_none

TINY = ["folds=2", "epochs=1", "backbone=test_vit", "tracking=none", "batch_size=64", "holdout=0"]
SPACE = """\
from search.space import choice, loguniform

data = "builtin:digits"
image_size = 32
hflip = False
augment = "none"
lr = loguniform(1e-3, 5e-3)
dropout = choice(0.0, 0.1)
"""


@pytest.fixture
def space(tmp_path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(SPACE)
    return path


def load(name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///studies/{name}/study.db")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_a_study_runs_its_trials_and_records_fold_scores(space):
    assert run(RunRequest(space=str(space), overrides=TINY, trials=2), hooks=[]) == "done"
    study = load()
    trials = finished(study)
    assert len(trials) == 2
    for trial in trials:
        assert len(trial.user_attrs["fold_scores"]) == 2
        assert trial.value == pytest.approx(np.mean(trial.user_attrs["fold_scores"]))
        assert trial.user_attrs["epochs"] == 2
        assert trial.user_attrs["config"]["lr"] == trial.params["lr"]
    fold_of = np.array(study.user_attrs["hpo.fold_of"])
    assert len(fold_of) == 1797 and set(fold_of) == {0, 1}


def test_resume_reaches_the_new_target_with_the_same_splits(space):
    run(RunRequest(space=str(space), overrides=TINY, trials=2), hooks=[])
    before = load().user_attrs["hpo.fold_of"]
    run(RunRequest(space=str(space), overrides=TINY, trials=4), hooks=[])
    study = load()
    assert len(finished(study)) == 4
    assert len(study.trials) == 4
    assert study.user_attrs["hpo.fold_of"] == before
    run(RunRequest(space=str(space), overrides=TINY, trials=4), hooks=[])
    assert len(load().trials) == 4  # target already met: nothing runs


def test_resume_with_another_space_or_data_is_refused(space, tmp_path):
    run(RunRequest(space=str(space), overrides=TINY, trials=1), hooks=[])
    with pytest.raises(StudyError, match=r"different search space \(epochs changed\)"):
        prepare(RunRequest(space=str(space), overrides=[*TINY, "epochs=2"]))
    folder = tmp_path / "imgs"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(4):
            _png(folder / label / f"{i}.png", 60 * i + (100 if label == "b" else 0))
    with pytest.raises(StudyError, match="other data"):
        prepare(RunRequest(space=str(space), overrides=[*TINY, f"data={folder}"]))
    # A new study name is the way out.
    prepare(RunRequest(space=str(space), overrides=[*TINY, f"data={folder}"], study="other"))


def test_a_study_keeps_the_defaults_it_was_created_with(space, capsys):
    # As if an earlier hpo had had rungs at a quarter and a half by default: the study stores
    # what it used, and keeps it while the space leaves the setting to today's default.
    earlier = [*TINY, "pruner_epoch_rungs=[0.25, 0.5]"]
    run(RunRequest(space=str(space), overrides=earlier, trials=1), hooks=[])
    capsys.readouterr()
    resumed = prepare(RunRequest(space=str(space), overrides=TINY))
    assert resumed.space.settings.pruner_epoch_rungs == (0.25, 0.5)
    said = " ".join(capsys.readouterr().err.split())
    assert (
        "Study 'tiny' keeps the settings it was created with: pruner_epoch_rungs = (0.25, 0.5)"
        in said
    )
    assert f"(the default is now {StudySettings().pruner_epoch_rungs!r})" in said
    # A value the space gives is compared as before.
    with pytest.raises(StudyError, match=r"different search space \(pruner_epoch_rungs changed\)"):
        prepare(RunRequest(space=str(space), overrides=[*TINY, "pruner_epoch_rungs=[0.5]"]))
    assert resumed.space.fingerprint() == load().user_attrs["hpo.fingerprint"]


def _png(path: Path, value: int) -> None:
    from PIL import Image

    Image.fromarray(np.full((16, 16, 3), value % 256, dtype=np.uint8)).save(path)


def test_an_absurd_learning_rate_is_pruned_before_its_second_fold(tmp_path):
    path = tmp_path / "prune.py"
    path.write_text(
        SPACE.replace("lr = loguniform(1e-3, 5e-3)", "lr = choice(3e-3, 1e-7)")
        + "pruner_startup_trials = 2\nsampler = 'random'\npruner_epoch_rungs = (1 / 3,)\n"
    )
    overrides = [*TINY, "epochs=3", "folds=3"]
    request = RunRequest(space=str(path), overrides=overrides, trials=3)
    study = prepare(request).study
    for lr in (3e-3, 3e-3, 1e-7):
        study.enqueue_trial({"lr": lr, "dropout": 0.0})
    run(request, hooks=[])
    bad = [t for t in load("prune").trials if t.params["lr"] == 1e-7]
    assert len(bad) == 1 and bad[0].state == TrialState.PRUNED
    assert bad[0].user_attrs["pruned_at"]["fold"] == 0
    assert "median" in bad[0].user_attrs["pruned_reason"]
    assert bad[0].user_attrs["epochs"] < 3


def test_cli_run_prints_progress_table_and_paths(space, capsys):
    assert main(["run", str(space), "--trials", "1", *TINY]) == 0
    err = capsys.readouterr().err
    assert "trial 0" in err and "Top trials of study 'tiny'" in err
    assert "studies/tiny/study.db" in err


def test_cli_reports_user_errors_in_one_line_with_status_2(space, capsys):
    assert main(["run", str(space), "--trials", "1", "epochs=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hpo: error: command line 'epochs=...': epochs=0 must be greater")
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_status_reads_a_study_while_another_process_runs_it(space, capsys):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "search.cli", "run", str(space), "--trials", "3", *TINY]
    worker = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and worker.poll() is None:
            db = Path("studies/tiny/study.db")
            if db.exists() and _finished_count() >= 1:
                break
            time.sleep(1)
        assert main(["status", "tiny"]) == 0
        out = capsys.readouterr().out
        assert "trials finished" in out and "complete" in out
    finally:
        assert worker.wait(timeout=300) == 0, worker.stderr.read().decode()[-2000:]
    assert _finished_count() == 3


def _finished_count() -> int:
    study = study_or_none("tiny", "sqlite:///studies/tiny/study.db")
    return len(finished(study)) if study else 0


def test_status_of_unknown_study_is_a_clear_error(capsys):
    assert main(["status", "nothing"]) == 2
    assert "No study storage" in capsys.readouterr().err


def test_cli_data_reports_classes_sizes_groups_and_unreadable_files(tmp_path, capsys):
    folder = tmp_path / "imgs"
    for label, count in (("cat", 3), ("dog", 2)):
        (folder / label).mkdir(parents=True)
        for i in range(count):
            _png(folder / label / f"{i}.png", 40 * i)
    (folder / "dog" / "broken.jpg").write_bytes(b"not an image")
    assert main(["data", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "6 images in 2 classes\n" in out  # a folder has no groups
    assert "cat" in out and "dog" in out and "16" in out  # the 16x16 image size
    assert "dog/broken.jpg" in out
    # The same images listed in a CSV with a group column (e.g. the person in each picture).
    files = sorted(p.relative_to(folder) for p in folder.rglob("*.*"))
    groups = ["ann", "ann", "bob", "cy", "cy", "dan"]
    rows = [f"{f},{f.parent.name},{g}" for f, g in zip(files, groups, strict=True)]
    (folder / "labels.csv").write_text("path,label,group\n" + "\n".join(rows) + "\n")
    assert main(["data", str(folder / "labels.csv")]) == 0
    out = capsys.readouterr().out
    assert "6 images in 2 classes, 4 groups\n" in out
    assert "dog/broken.jpg" in out


def test_the_end_of_a_run_names_the_storage_without_its_password(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from rich.console import Console

    from search.engine import run as run_module

    monkeypatch.setattr(run_module, "holdout_note", lambda space, size: None)
    console = Console(record=True, width=200)
    url = "postgresql://optuna:s3cret@db.example:5432/hpo"
    current = SimpleNamespace(
        console=console,
        study=optuna.create_study(),
        place=SimpleNamespace(name="b", storage_url=url, folder=tmp_path),
        space=None,
        table=[],
    )
    run_module._report(current)
    text = console.export_text()
    assert "Study storage: postgresql://optuna:***@db.example:5432/hpo" in text
    assert "s3cret" not in text

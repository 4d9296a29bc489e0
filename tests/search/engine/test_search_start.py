"""Where a study starts from: the space's baselines, and the trials of another study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

import search.engine.objective as objective_module
from search.cli.main import main
from search.context import RunRequest
from search.engine.run import run
from search.keys import BASELINE, FOLD_SCORES, WARM_START_FROM, WARM_STARTED
from search.space import SpaceError
from search.space.spacefile import load_space
from search.study.storage import StudyError
from tests.support.synthetic import fake_fit

SPACE = """\
from search.space import choice, loguniform, uniform

data = "builtin:digits"
image_size = 16
folds = 2
epochs = 2
tracking = "none"
sampler = "random"
pruner = "none"
backbone = choice("test_resnet", "test_vit")
lr = loguniform(1e-3, 1e-2)
loss = choice("ce", "focal")
focal_gamma = uniform(0.5, 3.0, when={"loss": "focal"})
"""


@pytest.fixture(autouse=True)
def synthetic_fit(monkeypatch):
    monkeypatch.setattr(objective_module, "fit", fake_fit)


def write(path: Path, extra: str = "", source: str = SPACE) -> Path:
    path.write_text(source + extra)
    return path


def load(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///studies/{name}/study.db")


def test_baselines_run_first_and_are_queued_once(tmp_path):
    baselines = (
        'baselines = [{"backbone": "test_vit", "lr": 0.002}, '
        '{"loss": "focal", "focal_gamma": 2, "lr": 0.005}]\n'
    )
    space = write(tmp_path / "base.py", baselines)
    run(RunRequest(space=str(space), trials=3), hooks=[])
    trials = load("base").trials
    assert (trials[0].params["backbone"], trials[0].params["lr"]) == ("test_vit", 0.002)
    assert trials[1].params["loss"] == "focal" and trials[1].params["focal_gamma"] == 2.0
    assert [t.user_attrs.get(BASELINE) for t in trials] == [0, 1, None]
    run(RunRequest(space=str(space), trials=4), hooks=[])  # resume: nothing queued again
    assert [t.user_attrs.get(BASELINE) for t in load("base").trials] == [0, 1, None, None]


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        ('{"lrr": 0.002}', "baselines[0] sets 'lrr', which is not a searched parameter"),
        ('{"lr": 0.5}', "sets lr=0.5, which the space cannot sample; use a number from 0.001"),
        ('{"backbone": "resnet50"}', "use one of 'test_resnet', 'test_vit'"),
        ('{"loss": "ce", "focal_gamma": 2.0}', "'focal_gamma', which exists only when loss in"),
    ],
)
def test_a_baseline_the_space_cannot_sample_is_an_error(tmp_path, baseline, message):
    space = write(tmp_path / "bad.py", f"baselines = [{baseline}]\n")
    with pytest.raises(SpaceError, match=r"bad\.py:14: ") as err:
        load_space(space)
    assert message in str(err.value)


def test_warm_start_copies_the_trials_a_refined_space_can_express(tmp_path):
    first = write(tmp_path / "first.py")
    run(RunRequest(space=str(first), trials=6), hooks=[])
    source = load("first")
    (Path("studies/first/trials") / "0").mkdir(parents=True)  # as if trial 0 kept checkpoints
    (Path("studies/first/trials/0") / "fold0.oof.npz").write_bytes(b"x")
    refined = write(tmp_path / "refined.py", source=SPACE.replace("1e-3, 1e-2", "1e-3, 5e-3"))
    request = RunRequest(space=str(refined), trials=8, warm_start="first")
    run(request, hooks=[])
    study = load("refined")
    copied = [t for t in study.trials if WARM_START_FROM in t.user_attrs]
    inside = [t for t in source.trials if t.params["lr"] <= 5e-3]
    assert len(copied) == len(inside) > 0
    for old, new in zip(inside, copied, strict=True):
        assert new.user_attrs[WARM_START_FROM] == f"first#{old.number}"
        assert (new.value, new.params) == (old.value, old.params)
        assert new.user_attrs[FOLD_SCORES] == old.user_attrs[FOLD_SCORES]
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 8  # copies count
    assert study.user_attrs[WARM_STARTED] == {"first": len(copied)}
    if inside[0].number == 0:
        assert (Path("studies/refined/trials") / str(copied[0].number) / "fold0.oof.npz").exists()
    run(RunRequest(space=str(refined), trials=9, warm_start="first"), hooks=[])
    assert len(load("refined").trials) == 9  # not copied twice


def test_patience_counts_only_the_trials_this_study_ran_not_the_copied_ones(tmp_path):
    # Issue 24 item 7: a warm start from a study that stopped by patience stopped at once.
    patient = "patience_trials = 3\n"
    first = write(tmp_path / "first.py", patient)
    assert run(RunRequest(space=str(first), trials=40, export=False), hooks=[]) == "patience"
    copied = len(load("first").trials)
    refined = write(tmp_path / "refined.py", patient, SPACE.replace("1e-3, 1e-2", "1e-3, 9e-3"))
    request = RunRequest(space=str(refined), trials=80, warm_start="first", export=False)
    run(request, hooks=[])
    study = load("refined")
    new = [t for t in study.trials if WARM_START_FROM not in t.user_attrs]
    assert len(study.trials) - len(new) > 3 and copied > 3
    assert len(new) >= 3


def test_warm_start_moves_pruned_trials_rung_values_onto_this_studys_rungs(tmp_path):
    # Issue 24 item 12: with other rungs the copied pruned trials lost their intermediate
    # values, and TPE ranks a pruned trial without any below every other.
    four = SPACE.replace("epochs = 2", "epochs = 4")
    first = write(tmp_path / "first.py", "pruner_epoch_rungs = (0.34,)\n", four)
    run(RunRequest(space=str(first), trials=1, export=False), hooks=[])
    source, done = load("first"), load("first").trials[0]
    # Pruned after one fold: the first fold's 2nd epoch (step 0), then that fold (step 1).
    pruned = create_trial(
        state=TrialState.PRUNED,
        params=done.params,
        distributions=done.distributions,
        user_attrs={"config": done.user_attrs["config"]},
        intermediate_values={0: 0.5, 1: 0.6},
    )
    source.add_trial(pruned)
    refined = write(tmp_path / "refined.py", "pruner_epoch_rungs = (0.25, 0.5)\n", four)
    run(RunRequest(space=str(refined), trials=3, warm_start="first", export=False), hooks=[])
    study = load("refined")
    (copy,) = [t for t in study.trials if t.state == TrialState.PRUNED]
    # Here the 2nd epoch is step 1 (the 1st is step 0), and one fold done is step 2.
    assert copy.intermediate_values == {1: 0.5, 2: 0.6}


def test_warm_start_is_refused_when_scores_would_not_compare(tmp_path, capsys):
    run(RunRequest(space=str(write(tmp_path / "first.py")), trials=1), hooks=[])
    longer = write(tmp_path / "longer.py", source=SPACE.replace("epochs = 2", "epochs = 3"))
    with pytest.raises(StudyError, match=r"other fixed values \(epochs=2 there, 3 here\)"):
        run(RunRequest(space=str(longer), trials=1, warm_start="first"), hooks=[])
    folds = write(tmp_path / "folds.py", source=SPACE.replace("folds = 2", "folds = 3"))
    with pytest.raises(StudyError, match="used other folds"):
        run(RunRequest(space=str(folds), trials=1, warm_start="first"), hooks=[])
    with pytest.raises(StudyError, match="names the study being run"):
        run(RunRequest(space=str(tmp_path / "first.py"), trials=1, warm_start="first"), hooks=[])
    space = str(write(tmp_path / "other.py"))
    assert main(["run", space, "--trials", "1", "--warm-start", "nowhere", "--no-export"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("hpo: error: No study storage at")
    assert "Traceback" not in err

"""`hpo run --workers N`: what the workers are told, what the parent makes of their exits."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from search.cli.main import build_parser, main
from search.engine.run import RunRequest
from search.engine.workers import WorkersFailed, outcome_of, worker_command
from search.study.storage import StudyPlace

TINY = ["folds=2", "epochs=1", "backbone=test_vit", "augment=none", "heartbeat=1"]
SPACE = """\
from search.space import loguniform

data = "builtin:digits"
image_size = 32
hflip = False
lr = loguniform(1e-3, 5e-3)
"""
LOGS = Path("studies/w/logs")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def space(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # workers import this checkout

    path = tmp_path / "w.py"
    path.write_text(SPACE)
    return path


def worker_args(request: RunRequest):
    """The arguments worker 1 of ``request`` parses, as `hpo run` would."""
    current = SimpleNamespace(target=7, place=StudyPlace.of("w"))
    command = worker_command(request, current, 1, {})
    assert command[1:4] == ["-m", "search.cli", "run"]
    args, extra = build_parser().parse_known_args(command[3:])
    return args, extra


def test_workers_get_the_timeout_the_parent_was_given():
    request = RunRequest(space="w.py", overrides=["epochs=2"], timeout=90.0, workers=2)
    args, extra = worker_args(request)
    assert args.timeout == 90.0
    assert (args.trials, args.study, args.worker_index, args.no_export) == (7, "w", 1, True)
    assert [*args.overrides, *extra] == ["epochs=2"]


def test_workers_get_no_timeout_when_the_parent_has_none():
    args, _ = worker_args(RunRequest(space="w.py", workers=2))
    assert args.timeout is None


def test_workers_that_all_stopped_at_a_timeout_end_the_run_as_timed_out():
    assert outcome_of(3, 10, {0: 0, 1: 0}, timed=True, logs=LOGS) == "timeout"
    assert outcome_of(10, 10, {0: 0, 1: 2}, timed=False, logs=LOGS) == "done"


@pytest.mark.parametrize(
    ("codes", "timed"),
    [({0: 0, 1: 0}, False), ({0: 0, 1: 2}, True), ({0: 1, 1: 1}, True)],
)
def test_workers_short_of_the_target_otherwise_failed(codes, timed):
    with pytest.raises(WorkersFailed, match=r"at 3/10 trials \(worker 0: \d, worker 1: \d\)"):
        outcome_of(3, 10, codes, timed=timed, logs=LOGS)


@pytest.mark.slow
def test_workers_stopped_by_the_space_files_timeout_still_export(space, capsys):
    # Each worker starts a trial or two within its 5 seconds, then stops short of 20 trials.
    argv = ["run", str(space), "--trials", "20", "--workers", "2", *TINY, "timeout=5"]
    assert main([*argv, "tracking=none"]) == 0
    err = capsys.readouterr().err
    assert "Stopped at --timeout" in err
    assert Path("studies/w/export/manifest.json").exists()


@pytest.fixture
def runs(monkeypatch):
    """Where `hpo run` would go: (in this process or in workers, GPUs visible, GPU list)."""
    from search.engine import run as run_module
    from search.engine import workers

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # restored afterwards
    calls = []

    def run_here(request):
        calls.append(("here", os.environ.get("CUDA_VISIBLE_DEVICES"), None))
        return "done"

    def run_workers(request, *, gpus=None):
        calls.append((f"{request.workers} workers", os.environ.get("CUDA_VISIBLE_DEVICES"), gpus))
        return "done"

    monkeypatch.setattr(run_module, "run", run_here)
    monkeypatch.setattr(workers, "run_workers", run_workers)
    return calls


def test_one_gpu_given_runs_in_this_process_on_that_gpu(runs):
    assert main(["run", "w.py", "--gpus", "3"]) == 0
    assert runs == [("here", "3", None)]


def test_several_gpus_run_one_worker_each_and_no_gpus_leave_the_devices_alone(runs):
    assert main(["run", "w.py", "--gpus", "1,2"]) == 0
    assert main(["run", "w.py", "--gpus", "3", "--workers", "2"]) == 0
    assert main(["run", "w.py"]) == 0
    assert runs == [
        ("2 workers", None, ["1", "2"]),
        ("2 workers", None, ["3"]),
        ("here", None, None),
    ]

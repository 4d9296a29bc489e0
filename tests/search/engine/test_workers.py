"""`hpo run --workers N`: what the workers are told, what the parent makes of their exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from search.cli.main import build_parser, main
from search.context import RunRequest
from search.engine.runner import tail_pause
from search.engine.workers import Worker, WorkersFailed, outcome_of, watch, worker_command
from search.study.storage import StudyPlace
from tests.support.readers import study_or_none
from tests.support.small_space import SETTINGS, write_space

TINY = [*SETTINGS, "epochs=1", "heartbeat=1"]
LOGS = Path("studies/w/logs")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def space(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # workers import this checkout
    return write_space(tmp_path / "w.py")


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
    # `hpo run` hands the export the study's plots (the export cannot import tracking's).
    assert "](figures/optimization_history.png)" in Path("studies/w/export/report.md").read_text()


@pytest.fixture
def runs(monkeypatch):
    """Where `hpo run` would go: (in this process or in workers, GPUs visible, GPU list).

    The machine is made to report 4 GPUs (without initialising CUDA), so the GPU numbers the
    tests route exist here.
    """
    import torch

    from search.engine import run as run_module
    from search.engine import workers

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # restored afterwards
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    calls = []

    def run_here(request):
        calls.append(("here", os.environ.get("CUDA_VISIBLE_DEVICES"), None))
        return "done"

    def run_workers(request, *, gpus=None, serve=None):
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


# A stand-in worker: counts the SIGINTs it receives, says so in its log, exits as `hpo run` does.
COUNTING_WORKER = """\
import signal, sys, time
received = []
signal.signal(signal.SIGINT, lambda *_: received.append(time.monotonic()))
print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not (received and time.monotonic() > received[0] + 2):
    time.sleep(0.05)
print(f"SIGINT received {len(received)} times", flush=True)
sys.exit(130 if received else 1)
"""
# The parent: a real `hpo run --workers 2` whose workers are the stand-in above.
PARENT = f"""\
import os, signal, sys
# As in a terminal, whatever the shell that started the tests ignores (nohup, a background job).
for signum in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, signal.SIG_DFL)
from search.engine import workers
workers.worker_command = lambda *_: [sys.executable, "-c", {COUNTING_WORKER!r}]
if os.environ.get("HPO_TEST_START") == "new process":  # not forked (as with GPUs)
    workers.can_fork = lambda plan: False
from search.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def start_parent(space: Path, start: str = "forked") -> subprocess.Popen:
    """The parent in a session of its own, so that the test can play its terminal."""
    argv = ["run", str(space), "--trials", "4", "--workers", "2", *TINY, "tracking=none"]
    return subprocess.Popen(
        [sys.executable, "-c", PARENT, *argv],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HPO_TEST_START": start},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_for_workers(parent: subprocess.Popen, logs: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert parent.poll() is None, parent.stderr.read().decode()[-3000:]
        texts = [p.read_text() for p in sorted(logs.glob("worker-*.log"))]
        if len(texts) == 2 and all("ready" in t for t in texts):
            return
        time.sleep(0.2)
    raise AssertionError("the workers did not start in time")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group", "start"),
    [
        (signal.SIGINT, True, "forked"),
        (signal.SIGINT, True, "new process"),
        (signal.SIGTERM, False, "forked"),
        (signal.SIGHUP, False, "forked"),
    ],
    ids=["ctrl-c-in-the-terminal", "ctrl-c-workers-not-forked", "sigterm-to-the-parent", "hangup"],
)
def test_each_worker_is_interrupted_exactly_once(space, signum, to_group, start):
    parent = start_parent(space, start)
    logs = Path("studies/w/logs")
    try:
        wait_for_workers(parent, logs)
        # A terminal sends Ctrl-C to its whole foreground process group, the parent's.
        if to_group:
            os.killpg(parent.pid, signum)
        else:
            parent.send_signal(signum)
        _, err = parent.communicate(timeout=120)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 130, err.decode()[-3000:]
    assert "Run the same command again to resume" in err.decode()
    for log in sorted(logs.glob("worker-*.log")):
        assert "SIGINT received 1 times" in log.read_text(), log.read_text()


def wait_for_two_running_trials(parent: subprocess.Popen, storage: str) -> None:
    """Until both workers are inside a trial (each has reported an epoch)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert parent.poll() is None, parent.stderr.read().decode()[-3000:]
        running = []
        if Path("studies/w/study.db").exists():  # the parent has created the storage
            study = study_or_none("w", storage)
            running = study.get_trials(states=(TrialState.RUNNING,)) if study else []
        if sum(bool(t.intermediate_values) for t in running) == 2:
            return
        time.sleep(0.3)
    raise AssertionError("the two workers were never inside a trial at the same time")


@pytest.mark.slow
def test_ctrl_c_in_the_terminal_fails_the_workers_trials_cleanly(space):
    # A long heartbeat: no worker may take a slow one's trial for dead on a loaded machine.
    argv = ["run", str(space), "--trials", "4", "--workers", "2", *TINY, "epochs=6", "heartbeat=60"]
    parent = subprocess.Popen(
        [sys.executable, "-m", "search.cli", *argv, "tracking=none", "threads=1"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    storage = "sqlite:///studies/w/study.db"
    try:
        wait_for_two_running_trials(parent, storage)
        os.killpg(parent.pid, signal.SIGINT)
        _, err = parent.communicate(timeout=180)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 130, err.decode()[-3000:]
    trials = optuna.load_study(study_name="w", storage=storage).trials
    states = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING], states
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 2, states
    assert {t.user_attrs["fail_reason"] for t in interrupted} == {"interrupted (Ctrl-C)"}
    for log in sorted(Path("studies/w/logs").glob("worker-*.log")):
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_an_idle_worker_looks_often_at_first_then_backs_off_to_the_poll_interval():
    pauses = [tail_pause(waited, 5.0) for waited in (0, 1, 3, 10, 30, 60, 600)]
    assert pauses[0] == 0.25  # the last trial usually ends within seconds
    assert pauses == sorted(pauses)
    assert pauses[-2:] == [5.0, 5.0]  # a long last trial: no more than the run's interval
    assert tail_pause(100, 0) == 0  # a run told not to wait does not


class _LastTrial:
    """A worker process that ends the study's last trial, then exits with 0."""

    def __init__(self, study: optuna.Study) -> None:
        self.study, self.polls = study, 0

    def poll(self) -> int | None:
        self.polls += 1
        if self.polls == 2:
            self.study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.8))
        return None if self.polls < 3 else 0


def test_the_parent_prints_the_trials_that_ended_after_its_last_look_and_does_not_wait():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.9))
    console = Console(record=True, width=200)
    place = SimpleNamespace(name="w")
    current = SimpleNamespace(study=study, console=console, target=2, place=place)
    started = time.monotonic()
    # The storage is read at the start and once the worker has exited, not in between.
    watch(current, [Worker(0, _LastTrial(study), Path("log"))], every=3600, exits=0.01)
    assert time.monotonic() - started < 5  # not a storage interval (3600 s)
    text = console.export_text()
    lines = text.splitlines()
    assert not [line for line in lines if line.startswith("trial 0 ")]  # ended before: not news
    assert [line for line in lines if line.startswith("trial 1 0.8000")]


def test_a_parent_that_gives_up_stops_its_workers(monkeypatch):
    # Issue 24 item 17: e.g. the storage stayed away past the parent's patience; its workers,
    # in process groups of their own, went on without it.
    from search.engine import workers as workers_module
    from search.hooks import HookList
    from search.study.storage import StudyError

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    current = SimpleNamespace(study=None, console=Console(), place=SimpleNamespace(name="w"))

    def gives_up(*args: object, **kwargs: object) -> None:
        raise StudyError("The study storage did not answer for 600 s.")

    monkeypatch.setattr(workers_module, "prepare", lambda request: current)
    monkeypatch.setattr(workers_module, "hooks_for", lambda *args: HookList([]))
    monkeypatch.setattr(workers_module, "start_workers", lambda *a: [Worker(0, sleeper, LOGS)])
    monkeypatch.setattr(workers_module, "watch", gives_up)
    try:
        with pytest.raises(StudyError):
            workers_module._run_workers(RunRequest(space="w.py", workers=1), [{}], [])
        assert sleeper.poll() is not None
    finally:
        sleeper.kill()
        sleeper.wait()

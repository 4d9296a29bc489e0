"""Spares: workers forked after the parent's imports, waiting for the command line they run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from search.engine.prefork import HPO_COMMAND, ForkedProcess, can_fork, fork_spares

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="spares fork: Linux only")


def report(argv: list[str]) -> int:
    """A stand-in for `hpo`: says what it was given and where it runs, returns 7."""
    print("argv", argv)
    print("variable", os.environ.get("HPO_SPARE_TEST"))
    print("own group", os.getpgid(0) == os.getpid())
    print("pid", os.getpid())
    return 7


def test_a_spare_runs_the_hpo_command_it_is_sent_in_itself_with_its_environment(tmp_path):
    (spare,) = fork_spares(1, report)
    log = tmp_path / "worker-0.log"
    process = spare.start(
        [*HPO_COMMAND, "run", "s.py", "--worker-index=0"], {"HPO_SPARE_TEST": "x"}, log
    )
    assert process.wait(timeout=60) == 7
    lines = log.read_text().splitlines()
    assert "argv ['run', 's.py', '--worker-index=0']" in lines
    assert "variable x" in lines  # the environment of the job, not of this process
    assert "own group True" in lines  # a terminal's Ctrl-C reaches only the parent
    assert f"pid {process.pid}" in lines and process.pid != os.getpid()
    assert "HPO_SPARE_TEST" not in os.environ


def test_a_spare_that_is_never_started_exits_at_once_without_running_anything(tmp_path):
    spares = fork_spares(2, report)
    for spare in spares:
        spare.cancel()
    assert [spare.process.returncode for spare in spares] == [0, 0]
    assert not list(tmp_path.iterdir())


def test_a_spare_sent_another_program_executes_it(tmp_path):
    (spare,) = fork_spares(1, report)
    log = tmp_path / "worker.log"
    script = "import os, sys; print(os.environ['HPO_SPARE_TEST']); sys.exit(3)"
    process = spare.start([sys.executable, "-c", script], {"HPO_SPARE_TEST": "y"}, log)
    assert process.wait(timeout=60) == 3
    assert log.read_text().splitlines() == ["y"]


def test_a_spare_whose_run_raises_leaves_the_traceback_in_its_log_and_exits_1(tmp_path):
    def broken(argv: list[str]) -> int:
        raise ValueError("something the run did not expect")

    (spare,) = fork_spares(1, broken)
    log = tmp_path / "worker.log"
    assert spare.start([*HPO_COMMAND, "run"], {}, log).wait(timeout=60) == 1
    text = log.read_text()
    assert "Traceback" in text and "ValueError: something the run did not expect" in text


def test_a_spare_keeps_what_was_printed_before_the_fork_out_of_its_log(tmp_path, capsys):
    print("the parent's own line, still buffered", end="")
    (spare,) = fork_spares(1, report)
    log = tmp_path / "worker.log"
    spare.start([*HPO_COMMAND, "status"], {}, log).wait(timeout=60)
    assert "the parent's own line" not in log.read_text()
    assert capsys.readouterr().out.count("the parent's own line") == 1


def test_a_spare_can_be_started_only_once(tmp_path):
    (spare,) = fork_spares(1, report)
    spare.start([*HPO_COMMAND, "status"], {}, tmp_path / "a.log").wait(timeout=60)
    with pytest.raises(RuntimeError, match="already been started"):
        spare.start([*HPO_COMMAND, "status"], {}, tmp_path / "b.log")


def test_workers_pinned_to_gpus_are_never_forked():
    assert can_fork([{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}] * 2)
    assert not can_fork([{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}])


def test_a_forked_process_reports_its_status_like_popen():
    pid = os.fork()
    if pid == 0:
        import time

        time.sleep(60)
        os._exit(0)
    process = ForkedProcess(pid)
    assert process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.2)
    process.kill()
    assert process.wait(timeout=10) == -9
    process.send_signal(15)  # after the exit: nothing to signal, no error


# `hpo run` whose forked workers say so before they run their command line: a worker started
# as a new process would not run this wrapper.
PARENT = """\
import os, sys
from search.cli import main as cli
real = cli.main
def serve(argv):
    print("forked worker of", os.getppid(), flush=True)
    return real(argv)
cli.main = serve  # what the parser hands to the forked workers
sys.exit(real(sys.argv[1:]))
"""


@pytest.mark.slow
def test_hpo_run_with_workers_forks_them_and_they_run_the_study(tmp_path):
    space = tmp_path / "w.py"
    space.write_text(
        'data = "builtin:digits"\nbackbone = "test_resnet"\nimage_size = 16\n'
        'pruner = "none"\ntracking = "none"\n'
    )
    argv = ["run", str(space), "--trials", "2", "--workers", "2", "epochs=1", "folds=2"]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, *argv, "--no-export"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = parent.communicate(timeout=300)
    assert parent.returncode == 0, err[-3000:]
    assert "2/2 trials finished" in out + err
    for log in sorted((tmp_path / "studies/w/logs").glob("worker-*.log")):
        text = log.read_text()
        assert f"forked worker of {parent.pid}" in text, text[-3000:]
        assert "Traceback" not in text

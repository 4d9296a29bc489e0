"""Worker processes forked from the parent once it has imported everything, so they start at once.

Every `hpo run` process spends seconds importing torch, timm, scikit-learn, albumentations and
MLflow before it can train (9.6 s on a 2-core AMD EPYC, about 5 s on a 2-core Xeon). Workers
started as new processes once the study exists pay that again, one after the other with the
parent's own imports, and in a short study it is a real share of the wall time. A spare is
forked from the parent after its imports and before it opens any storage or starts a thread of
its own; it waits on a pipe until the parent, having created the study, sends its command line,
which it then runs in-process (a command that is not `python -m search.cli` is exec'd).

Forking after the imports is what torch's DataLoader does with its workers on Linux, from a
process that has also trained. Spares are used only on Linux and only when no worker is given a
GPU: CUDA cannot be used in a child of a process that has asked the driver for its GPUs, as the
parent does to pin each worker to one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

Serve = Callable[[list[str]], int]
"""Runs `hpo` with an argument list in this process and returns its exit status."""

HPO_COMMAND = [sys.executable, "-m", "search.cli"]


def can_fork(plan: Sequence[Mapping[str, str]]) -> bool:
    """Whether workers with these environment overrides may be forked from this process."""
    gpus = any("CUDA_VISIBLE_DEVICES" in env for env in plan)
    return sys.platform == "linux" and not gpus and not torch.cuda.is_initialized()


class ForkedProcess:
    """A forked child, with the part of `subprocess.Popen`'s interface the parent uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit status; `subprocess.TimeoutExpired` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker process {self.pid}", timeout or 0)
            time.sleep(0.05)
        return code

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` unless the process has already exited."""
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Spare:
    """A forked process waiting for the command line it is to run."""

    def __init__(self, pid: int, pipe: int) -> None:
        self.process = ForkedProcess(pid)
        self._pipe: int | None = pipe

    def start(self, command: Sequence[str], env: Mapping[str, str], log: Path) -> ForkedProcess:
        """Run ``command`` with ``env`` added to the environment, its output appended to ``log``."""
        job = json.dumps({"command": list(command), "env": dict(env), "log": str(log)})
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            raise RuntimeError("this spare has already been started or cancelled")
        with os.fdopen(pipe, "w") as sink:
            sink.write(job)
        return self.process

    def cancel(self) -> None:
        """Let a spare that was never started exit (status 0), and wait for it."""
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
            self.process.wait()


def fork_spares(count: int, serve: Serve) -> list[Spare]:
    """Fork ``count`` spares; each will run an `hpo` command line with ``serve``."""
    for stream in (sys.stdout, sys.stderr):  # or the children would write it out again
        stream.flush()
    spares: list[Spare] = []
    for _ in range(count):
        read, write = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a process with threads; those here are the
            # BLAS and allocator threads of the imports, which handle fork (see the docstring).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(write)
            for sibling in spares:  # a sibling must see EOF when the parent goes away
                if sibling._pipe is not None:
                    os.close(sibling._pipe)
            _spare(read, serve)
        os.close(read)
        _own_group(pid)
        spares.append(Spare(pid, write))
    return spares


def _own_group(pid: int) -> None:
    """Put ``pid`` in a process group of its own (both parent and child do, against the race).

    A terminal's Ctrl-C then reaches only the parent, which passes it on once.
    """
    # PermissionError: the child has exec'd already; ProcessLookupError: it is gone.
    with contextlib.suppress(PermissionError, ProcessLookupError):
        os.setpgid(pid, pid)


def _spare(read: int, serve: Serve) -> NoReturn:
    """The child: wait for a job, run it, exit with its status (never returning)."""
    code = 1
    try:
        _own_group(0)
        _reset_signals()
        with os.fdopen(read) as source:
            text = source.read()
        code = _run(json.loads(text), serve) if text else 0  # nothing sent: not needed
    except KeyboardInterrupt:
        code = 130
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # exiting anyway; the status tells what happened
                stream.flush()
        # Not sys.exit: the parent's frames (and, under pytest, pytest's) must not unwind here.
        os._exit(code)


def _reset_signals() -> None:
    """The signal handlers a new process would have: defaults, except what the parent ignores."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) not in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(signum, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(job: dict, serve: Serve) -> int:
    """Run one job in this (forked) process, as a new process started with it would."""
    log = os.open(job["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # Fresh line-buffered streams on the log: the inherited ones may be a test's capture.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives until exit
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.update(job["env"])
    random.seed()  # as a new process would be: not the parent's (and siblings') state
    np.random.seed()
    command = job["command"]
    if command[: len(HPO_COMMAND)] == HPO_COMMAND:
        argv = command[len(HPO_COMMAND) :]
        sys.argv = [sys.argv[0], *argv]
        return serve(argv)
    os.execve(command[0], command, os.environ)

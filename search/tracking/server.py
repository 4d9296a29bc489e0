"""The MLflow server behind `hpo ui`: started on loopback, waited for, stopped with its group.

`search.cli.ui` is the verb; `hpo dashboard` stops its server the same way. A supervisor's
SIGTERM or a closed terminal's SIGHUP stop hpo as Ctrl-C does, so no server outlives it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trainer.errors import UserError

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_STARTUP_SECONDS = 120.0


class UiError(UserError):
    """The UI cannot be started as asked."""


def serve_until_stopped(server: subprocess.Popen) -> None:
    """Wait until ``server`` exits, or Ctrl-C, SIGTERM or SIGHUP; it never outlives this call."""
    with stop_signals_interrupt():
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_server(server)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `KeyboardInterrupt`, so the server is stopped as on Ctrl-C.

    The server runs in its own session (Ctrl-C reaches only hpo), so a supervisor, `timeout`,
    `kill` or a closed terminal that ended hpo at once would leave it serving on the port.
    """

    def interrupt(signum: int, frame: object) -> None:
        for sig in _STOP_SIGNALS:  # a second signal must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def server_command(store: str, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow server`` command line for ``store`` (one worker: a UI for one person)."""
    mlflow = Path(sys.executable).with_name("mlflow")
    program = [str(mlflow)] if mlflow.exists() else [sys.executable, "-m", "mlflow"]
    return [
        *program,
        "server",
        "--backend-store-uri",
        store,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def start_server(
    store: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    log: Path | None = None,
    timeout: float = _STARTUP_SECONDS,
) -> subprocess.Popen:
    """Start ``mlflow server`` for ``store`` and wait until it answers.

    Args:
        store: Tracking URI of the backend store (e.g. ``sqlite:////abs/mlflow.db``).
        host: Interface to bind.
        port: Port to listen on.
        log: File for the server's output; by default it is discarded.
        timeout: Seconds to wait for the server to answer.

    Returns:
        The server process (in its own process group; stop it with `stop_server`).

    Raises:
        UiError: If the server exits or does not answer in time.
    """
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (the child owns it)
    server = subprocess.Popen(
        server_command(store, host=host, port=port),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches hpo, which stops the whole server cleanly
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
    )
    if log:
        out.close()
    try:
        _wait_until_it_answers(server, store, host=host, port=port, timeout=timeout)
    except BaseException:  # also KeyboardInterrupt: a server that never answered is stopped too
        stop_server(server)
        raise
    return server


def _wait_until_it_answers(
    server: subprocess.Popen, store: str, *, host: str, port: int, timeout: float
) -> None:
    health = f"http://{visible_host(host)}:{port}/health"
    failed = wait_for_answer(server, health, timeout=timeout, interval=0.5)
    if failed == "exited":
        raise UiError(f"mlflow server for {store} exited with status {server.returncode}.")
    if failed:
        raise UiError(
            f"mlflow server for {store} did not answer on port {port} in {timeout:.0f} s."
        )


def wait_for_answer(
    server: subprocess.Popen, url: str, *, timeout: float, interval: float
) -> str | None:
    """Poll ``url`` until it answers 200: None then, ``"exited"`` or ``"silent"`` if it never does.

    ``"exited"``: ``server`` ended first (its ``returncode`` says how); ``"silent"``: ``timeout``
    seconds passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return "exited"
        if _answers(url):
            return None
        time.sleep(interval)
    return "silent"


def stop_server(server: subprocess.Popen) -> None:
    """Stop a server from `start_server` and its worker processes.

    The whole process group must be gone, not only the ``mlflow`` process: its uvicorn workers
    may outlive it for a moment and keep answering on the port.
    """
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.pid, sig)  # its own group: the uvicorn workers go too
        except ProcessLookupError:
            return
        if _group_gone(server, wait):
            return


def _group_gone(server: subprocess.Popen, wait: float) -> bool:
    """Whether the server's process group is empty within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        server.poll()  # reaps the group leader once it exits
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def check_port(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise UiError(
                f"Port {port} on {host} is in use (another UI?); pass --port {port + 1}."
            ) from None


def visible_host(host: str) -> str:
    """The address to print for a server bound to ``host`` (loopback for every interface)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

"""`hpo ui`: the MLflow UI of the tracking store hpo writes to, and where a study's runs are.

The store is the one `hpo run` uses: ``MLFLOW_TRACKING_URI`` if set, else MLflow's default
(``sqlite:///mlflow.db`` in the working directory). A local store gets its own ``mlflow server``
bound to loopback unless ``--host`` says otherwise; a tracking server is already running, so
only its address is printed. The address printed is the study's runs table with the "Model
training" view, because MLflow's plain experiment page opens in its GenAI view, and it lists the
study's trials best first with their parameters and score as columns (see `search.tracking.view`).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from search.keys import STUDY_TAG
from search.tracking.view import UI_PORT, VIEW_TAG, runs_address
from trainer.errors import UserError

_REMOTE = ("http://", "https://")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_STARTUP_SECONDS = 120.0


class UiError(UserError):
    """The UI cannot be started as asked."""


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """Add the ``ui`` verb: ``hpo ui [STUDY] [--port 5000] [--host 127.0.0.1]``."""
    ui = verbs.add_parser("ui", help="start the MLflow UI for the studies' runs")
    ui.add_argument("study", nargs="?", help="study whose runs table to open (default: all)")
    ui.add_argument(
        "--port", type=int, default=UI_PORT, help=f"port to listen on (default {UI_PORT})"
    )
    ui.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine)"
    )
    ui.set_defaults(handler=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the UI (or point at the tracking server), print the address, wait for Ctrl-C."""
    from search.tracking.writer import prepare_mlflow

    prepare_mlflow()
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith(_REMOTE):
        return _point_at_server(uri, args.study)
    _check_store(uri)
    check_port(args.host, args.port)
    studies = _experiments(uri, args.study)  # an unknown study fails before anything starts
    with _stop_signals_interrupt():
        try:
            server = start_server(uri, host=args.host, port=args.port)
        except KeyboardInterrupt:
            return 0  # start_server stops what it started
        # A signal may come while the addresses are printed, before the wait below: the server
        # must not outlive hpo then either.
        try:
            print(f"MLflow UI for {uri} (Ctrl-C to stop):")
            _print_addresses(f"http://{_visible_host(args.host)}:{args.port}", studies)
            serve_until_stopped(server)
        except KeyboardInterrupt:
            pass
        finally:
            stop_server(server)
    return 0


def serve_until_stopped(server: subprocess.Popen) -> None:
    """Wait until ``server`` exits, or Ctrl-C, SIGTERM or SIGHUP; it never outlives this call."""
    with _stop_signals_interrupt():
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_server(server)


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
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


def _point_at_server(uri: str, study: str | None) -> int:
    base = uri.rstrip("/")
    print(f"MLflow tracking server: {base}")
    try:
        studies = _experiments(uri, study)
    except UiError:
        raise
    except Exception:  # the server is down or refuses us: its address is all we know
        print(f"  (could not list its studies; open {base})")
        return 0
    _print_addresses(base, studies)
    return 0


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
    health = f"http://{_visible_host(host)}:{port}/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UiError(f"mlflow server for {store} exited with status {server.returncode}.")
        if _answers(health):
            return
        time.sleep(0.5)
    raise UiError(f"mlflow server for {store} did not answer on port {port} in {timeout:.0f} s.")


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


def _visible_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _check_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists():
            raise UiError(
                f"No MLflow store at {path}: run `hpo run` in this folder first, or set "
                "MLFLOW_TRACKING_URI to the store your studies wrote to."
            )


def check_port(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise UiError(
                f"Port {port} on {host} is in use (another UI?); pass --port {port + 1}."
            ) from None


Study = tuple[str, str, Mapping[str, str]]  # name, experiment id, experiment tags


def _print_addresses(base: str, studies: list[Study]) -> None:
    if not studies:
        print(f"  {base} (no studies yet)")
    for name, experiment_id, tags in studies:
        print(f"  {name}: {runs_address(base, experiment_id, view=VIEW_TAG in tags)}")


def _experiments(uri: str, study: str | None) -> list[Study]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    if study is not None:
        found = client.get_experiment_by_name(study)
        if found is None:
            raise UiError(
                f"No experiment named '{study}' in {uri}; `hpo ui` without a study lists them."
            )
        return [(study, found.experiment_id, found.tags)]
    studies = client.search_experiments(filter_string=f"tags.`{STUDY_TAG}` != ''")
    return [(e.name, e.experiment_id, e.tags) for e in studies]

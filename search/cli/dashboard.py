"""`hpo dashboard STUDY`: optuna-dashboard on the study's own storage, bound to this machine.

optuna-dashboard (an optional extra: ``pip install 'hpo[dashboard]'``) reads the Optuna storage
directly, so it shows a study while its workers run: trials, intermediate values, importances.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

from search.tracking.server import (
    check_port,
    serve_until_stopped,
    stop_server,
    wait_for_answer,
)
from trainer.errors import UserError

_START_SECONDS = 60.0


class DashboardError(UserError):
    """optuna-dashboard cannot be started as asked."""


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """Add the ``dashboard`` verb: ``hpo dashboard STUDY [--storage URL] [--port 8080]``."""
    dash = verbs.add_parser("dashboard", help="start optuna-dashboard on a study's storage")
    dash.add_argument("study", help="study name (the space file's stem by default)")
    dash.add_argument("--storage", help="Optuna storage URL (default: studies/STUDY/study.db)")
    dash.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    dash.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine)"
    )
    dash.set_defaults(handler=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Start optuna-dashboard, print the study's address, wait for Ctrl-C or SIGTERM."""
    from search.study.storage import StudyPlace, load_hpo_study, redact_url

    if importlib.util.find_spec("optuna_dashboard") is None:
        raise DashboardError(
            "optuna-dashboard is not installed; install it with pip install 'hpo[dashboard]' "
            "(or pip install optuna-dashboard)."
        )
    place = StudyPlace.of(args.study, args.storage)
    study_id = load_hpo_study(place)._study_id  # an unknown study fails before anything starts
    check_port(args.host, args.port)
    server = start_dashboard(place.storage_url, host=args.host, port=args.port)
    base = f"http://{args.host}:{args.port}"
    print(f"optuna-dashboard for {redact_url(place.storage_url)} (Ctrl-C to stop):")
    print(f"  study '{place.name}': {base}/dashboard/studies/{study_id}")
    serve_until_stopped(server)
    return 0


def dashboard_command(storage_url: str, *, host: str, port: int) -> list[str]:
    """The optuna-dashboard command line for ``storage_url`` on ``host:port``."""
    # Run through this interpreter so that the dashboard sees hpo's database drivers.
    code = "import sys; from optuna_dashboard._cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, storage_url, "--host", host, "--port", str(port)]


def start_dashboard(storage_url: str, *, host: str, port: int) -> subprocess.Popen:
    """Start optuna-dashboard in its own process group and wait until it answers.

    Raises:
        DashboardError: It exited or did not answer within a minute.
    """
    server = subprocess.Popen(
        dashboard_command(storage_url, host=host, port=port),
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # its own group: stopping it stops every process it started
    )
    try:
        _wait_until_it_answers(server, f"http://{host}:{port}/api/studies", port)
    except BaseException:  # also Ctrl-C while it starts: it never outlives hpo
        stop_server(server)
        raise
    return server


def _wait_until_it_answers(server: subprocess.Popen, url: str, port: int) -> None:
    failed = wait_for_answer(server, url, timeout=_START_SECONDS, interval=0.3)
    if failed == "exited":
        raise DashboardError(f"optuna-dashboard exited with status {server.returncode}.")
    if failed:
        raise DashboardError(f"optuna-dashboard did not answer on port {port} within a minute.")

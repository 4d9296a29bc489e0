"""`hpo ui`: the MLflow UI of the tracking store hpo writes to, and where a study's runs are.

The store is the one `hpo run` uses: ``MLFLOW_TRACKING_URI`` if set, else MLflow's default
(``sqlite:///mlflow.db`` in the working directory). A local store gets its own ``mlflow server``
bound to loopback unless ``--host`` says otherwise; a tracking server is already running, so
only its address is printed. The address printed is the study's runs table with the "Model
training" view, because MLflow's plain experiment page opens in its GenAI view, and it lists the
study's trials best first with their parameters and score as columns (see
`search.tracking.ui_address`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from search.keys import STUDY_TAG
from search.tracking.server import (
    UiError,
    check_port,
    serve_until_stopped,
    start_server,
    stop_server,
    stop_signals_interrupt,
    visible_host,
)
from search.tracking.ui_address import UI_PORT, VIEW_TAG, runs_address

_REMOTE = ("http://", "https://")


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
    with stop_signals_interrupt():
        try:
            server = start_server(uri, host=args.host, port=args.port)
        except KeyboardInterrupt:
            return 0  # start_server stops what it started
        # A signal may come while the addresses are printed, before the wait below: the server
        # must not outlive hpo then either.
        try:
            print(f"MLflow UI for {uri} (Ctrl-C to stop):")
            _print_addresses(f"http://{visible_host(args.host)}:{args.port}", studies)
            serve_until_stopped(server)
        except KeyboardInterrupt:
            pass
        finally:
            stop_server(server)
    return 0


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


def _check_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.exists():
            raise UiError(
                f"No MLflow store at {path}: run `hpo run` in this folder first, or set "
                "MLFLOW_TRACKING_URI to the store your studies wrote to."
            )


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

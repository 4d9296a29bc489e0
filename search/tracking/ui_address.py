"""The address of a study's trials in the MLflow UI: best first, parameters and score as columns.

MLflow's runs page reads its filter and sort order from the address (``searchFilter``,
``orderByKey``, ``orderByAsc``) but its visible columns only from a "shared view": an experiment
tag ``mlflow.sharedViewState.<key>`` holding the view as JSON, opened by the address parameter
``viewStateShareKey=<key>`` (what the UI's Share button writes). The tracker stores hpo's view on
the study's experiment; `runs_address` links to it, or, for an experiment without it, to the
filtered and sorted table. Imports nothing heavy: `hpo ui` uses it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import quote, urlencode

from search import keys

VIEW_TAG = keys.SHARED_VIEW_TAG_PREFIX + keys.TRIALS_VIEW
TRIALS_FILTER = f"tags.`{keys.KIND_TAG}` = '{keys.KIND_TRIAL}'"
SCORE_COLUMN = f"metrics.`{keys.SCORE_MEAN_METRIC}`"
UI_PORT = 5000  # `hpo ui`'s default port


def trials_view(searched: Iterable[str], *, maximize: bool) -> str:
    """The shared view of a study's trials as MLflow's UI reads it (JSON).

    Args:
        searched: The searched parameters, shown as columns after the score.
        maximize: Whether a higher score is better (the best trial comes first).
    """
    columns = [
        SCORE_COLUMN,
        f"metrics.`{keys.SCORE_STD_METRIC}`",
        *(f"params.`{name}`" for name in searched),
        f"tags.`{keys.STATE_TAG}`",
    ]  # no Dataset column: every trial has the same, and the table's width is for parameters
    view = {**_facets(maximize=maximize), "selectedColumns": columns}
    return json.dumps(view, separators=(",", ":"))


def runs_address(base: str, experiment_id: str, *, view: bool = True) -> str:
    """The address of an experiment's trials, best first, in the "Model training" view.

    Args:
        base: The UI's address, e.g. ``http://127.0.0.1:5000``.
        experiment_id: The study's experiment.
        view: Whether the experiment has hpo's view (tag `VIEW_TAG`): the address opens it,
            with its columns; without, the trials filtered and sorted, with the UI's columns.
    """
    query: dict[str, str] = {"workflowType": "machine_learning"}
    if view:
        query["viewStateShareKey"] = keys.TRIALS_VIEW
    else:
        facets = _facets(maximize=True)
        query.update({k: str(v).lower() if isinstance(v, bool) else v for k, v in facets.items()})
    address = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return f"{address}?{urlencode(query, quote_via=quote)}"


def address_line(uri: str, study: str, experiment_id: str) -> str:
    """What `hpo run` prints at its end: where the study's trials are in the MLflow UI."""
    if uri.startswith(("http://", "https://")):  # a tracking server: its UI is up
        return f"MLflow runs:   {runs_address(uri, experiment_id)}"
    local = runs_address(f"http://127.0.0.1:{UI_PORT}", experiment_id)
    return f"MLflow runs:   {local} (after `hpo ui {study}`)"


def _facets(*, maximize: bool) -> dict[str, str | bool]:
    return {"searchFilter": TRIALS_FILTER, "orderByKey": SCORE_COLUMN, "orderByAsc": not maximize}

"""Publishing a written export to MLflow: the model logged and registered, and made the
``champion`` when its out-of-fold score wins. A failure costs one line, never the export."""

from __future__ import annotations

from dataclasses import replace

import optuna
from rich.console import Console

from search import keys
from search.export.build import ExportResult
from search.export.report import flat_metrics


def log_to_mlflow(result: ExportResult, study: optuna.Study, console: Console) -> ExportResult:
    """Log and register the export in MLflow; a failure costs one line, never the export;
    the version becomes ``champion`` when its out-of-fold score wins (the holdout is a report)."""
    from search.export.mlflow_model import champion_line, failure_line, log_ensemble, scored

    headline = scored(result.scores)
    try:
        logged = log_ensemble(
            result.folder,
            study_name=result.study,
            run_id=study.user_attrs.get(keys.STUDY_RUN_ATTR),
            metrics=flat_metrics(result.scores),
            headline=headline,
        )
    except Exception as err:  # the export on disk is complete; MLflow only holds a copy
        line = failure_line(err, folder=result.folder, study=result.study)
        console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)
        return result
    console.print(champion_line(logged, headline, study=result.study, folder=result.folder))
    return replace(result, model_uri=logged.uri, champion=logged.champion)

"""`hpo export`: the best trial's fold models (or the top K trials') as one scored ensemble.

The export folder ``studies/<name>/export/`` holds everything needed to predict, and nothing
that needs the study storage or MLflow to load:

    best_space.py          the best configuration as a space file `hpo run` accepts as it is
    manifest.json          classes, members (backbone, image size, normalisation, config,
                           voting weight, and the resolved architecture of hf-hub:/local-dir:
                           backbones), TTA, how the members were chosen
    members/*.safetensors  one file per fold model
    ensemble.onnx          the whole ensemble for onnxruntime: uint8 images in, probabilities out
    report.md              holdout and out-of-fold (optimistic) scores

The members are chosen by ensemble selection (Caruana) over the fold models of the top K trials,
on their stored out-of-fold predictions (``ensemble = "select"``), or are the best trial's fold
models (``"best"``). The out-of-fold scores are shown as "CV (optimistic)": epochs, trials and
weights were chosen on them. The headline is the score on the holdout split, which no trial
ever saw, when the study has one.

This module holds the entry points; the work happens in `search.export.build` (the members in
`search.export.candidates` and `search.export.members`, the texts in `search.export.report`,
the MLflow model in `search.export.publish`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.console import make_console
from search.export.build import DrawPlots, ExportResult, build_export
from search.export.publish import log_to_mlflow
from search.export.report import show
from search.export.study_source import StudySource, run_source, storage_source

if TYPE_CHECKING:
    from rich.console import Console

    from search.context import StudyRun


def export_study(
    run: StudyRun,
    *,
    top_k: int | None = None,
    tta: str | None = None,
    ensemble: str | None = None,
    plots: DrawPlots | None = None,
) -> ExportResult:
    """Export the ensemble of a study that just ran (called at the end of `hpo run`).

    Args:
        run: The study run; its settings give the defaults of the other arguments.
        top_k: Select among the fold models of this many best trials (default: ``top_k``).
        tta: Test-time augmentation written into the export (default: setting ``tta``).
        ensemble: ``select`` or ``best`` (default: setting ``ensemble``).
        plots: Draws the study's plots for report.md (None: no plots).

    Raises:
        NothingToExport: If no trial is complete.
    """
    log = run.space.settings.tracking == "mlflow"
    return export(
        run_source(run),
        top_k=top_k,
        tta=tta,
        ensemble=ensemble,
        console=run.console,
        mlflow=log,
        plots=plots,
    )


def export_from_storage(
    name: str,
    *,
    storage: str | None = None,
    top_k: int | None = None,
    tta: str | None = None,
    ensemble: str | None = None,
    data: str | None = None,
    mlflow: bool | None = None,
    console: Console | None = None,
    plots: DrawPlots | None = None,
) -> ExportResult:
    """Export a study found by name in its storage (`hpo export STUDY`).

    Args:
        name: The study name.
        storage: Its Optuna storage URL (default: ``studies/<name>/study.db``).
        top_k: Select among this many best trials (default: the study's ``top_k`` setting).
        tta: TTA written into the export (default: the study's ``tta`` setting).
        ensemble: ``select`` or ``best`` (default: the study's ``ensemble`` setting).
        data: Where the study's data is now, if it moved (read only for a holdout).
        mlflow: Log and register the model in MLflow (default: the study's ``tracking``).
        console: Where the scores are printed.
        plots: Draws the study's plots for report.md (None: no plots).

    Raises:
        StudyError: The study does not exist, or the data is not the study's.
        NothingToExport: No trial is complete.
    """
    source = storage_source(name, storage=storage, data=data)
    log = source.settings.tracking == "mlflow" if mlflow is None else mlflow
    console = console or make_console(stderr=False)
    return export(
        source, top_k=top_k, tta=tta, ensemble=ensemble, console=console, mlflow=log, plots=plots
    )


def export(
    source: StudySource,
    *,
    top_k: int | None,
    tta: str | None,
    console: Console,
    mlflow: bool,
    ensemble: str | None = None,
    plots: DrawPlots | None = None,
) -> ExportResult:
    """Build the export, print its scores and, if asked, log it to MLflow."""
    result = build_export(source, top_k=top_k, tta=tta, ensemble=ensemble, plots=plots)
    show(result.scores, console, folder=result.folder, manifest=result.manifest)
    if result.previous is not None:
        console.print(f"The export it replaced is kept in {result.previous} (one generation).")
    return log_to_mlflow(result, source.study, console) if mlflow else result

"""The exported ensemble as an MLflow pyfunc model, logged on the study's run and registered.

The model is logged "from code": MLflow stores a three-line file that builds `EnsembleModel`,
the export folder as an artifact, and copies of the ``trainer`` and ``search`` packages, so
nothing is pickled and the model loads where hpo is not installed. `load_context` rebuilds the
`Ensemble` from the export's safetensors weights, so

    mlflow.pyfunc.load_model(uri).predict(frame_with_path_column)

returns the same probabilities as `hpo predict`.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec

import search
import trainer
from trainer.ensemble import Ensemble

ARTIFACT = "export"
# Network failures, as they appear inside MLflow's (multi-line) HTTP error texts.
_SYMPTOMS = (
    "Connection refused",
    "Name or service not known",
    "Read timed out",
    "timed out",
    "Max retries exceeded",
)
MODEL_NAME = "ensemble"
_CODE = (
    "import mlflow\n"
    "from search.export.mlflow_model import EnsembleModel\n"
    "mlflow.models.set_model(EnsembleModel())\n"
)
_REQUIREMENTS = (
    "mlflow",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pandas",
    "pillow",
    "safetensors",
    "albumentations",
    "tqdm",
)


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Predicts class probabilities with the export's `Ensemble`.

    ``predict`` accepts a DataFrame (or dict) with a ``path`` column of image files, a list of
    paths, a uint8 image batch ``(N, H, W, 3)``, or a list of images of any size and mode. It
    returns a DataFrame with ``label`` and one ``prob_<class>`` column per class (rows of NaN
    and an empty label for files that cannot be read). ``params={"tta": "hflip"}`` overrides
    the export's test-time augmentation.
    """

    # MLflow's type-hint validation is off and `model_input` is deliberately not annotated:
    # this model takes several kinds of input and checks them itself.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Rebuild the ensemble from the logged export folder."""
        self.ensemble = Ensemble.load(context.artifacts[ARTIFACT])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Class probabilities of ``model_input`` (see the class docstring)."""
        tta = (params or {}).get("tta")
        paths = _paths(model_input)
        if paths is not None:
            probs, _ = self.ensemble.predict_files([Path(p) for p in paths], tta=tta)
        else:
            probs = self.ensemble.predict(_images(model_input), tta=tta)
        return probability_frame(probs, self.ensemble.classes)


def probability_frame(probs: np.ndarray, classes: tuple[str, ...]) -> pd.DataFrame:
    """``label`` plus one ``prob_<class>`` column per class; empty label for rows of NaN."""
    known = ~np.isnan(probs).any(axis=1)
    top = np.where(known, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), 0)
    labels = [classes[i] if ok else "" for i, ok in zip(top, known, strict=True)]
    columns = {f"prob_{name}": probs[:, i].astype(np.float64) for i, name in enumerate(classes)}
    return pd.DataFrame({"label": labels, **columns})


def _paths(model_input: Any) -> list[str] | None:
    if isinstance(model_input, pd.DataFrame | Mapping) and "path" in model_input:
        return [str(p) for p in model_input["path"]]
    if isinstance(model_input, pd.Series | list | tuple) and all(
        isinstance(p, str | Path) for p in model_input
    ):
        return [str(p) for p in model_input]
    return None


def _images(model_input: Any) -> np.ndarray | list[np.ndarray]:
    if isinstance(model_input, np.ndarray):
        # One image, (H, W) or (H, W, C), is a batch of one.
        single = model_input.ndim == 2 or (
            model_input.ndim == 3 and model_input.shape[-1] in (1, 3, 4)
        )
        return [model_input] if single else model_input
    if isinstance(model_input, list | tuple):
        return [np.asarray(image) for image in model_input]
    raise TypeError(
        f"Cannot predict a {type(model_input).__name__}; pass a DataFrame with a 'path' column, "
        "a list of image paths, or uint8 images (N, H, W, 3)."
    )


def log_ensemble(
    export_dir: Path,
    *,
    study_name: str,
    run_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> str:
    """Log the export as a pyfunc model, with its scores, and register it as ``study_name``.

    Args:
        export_dir: The export folder (see `search.export.study_export`).
        study_name: The study; the registered model's name and, without ``run_id``, the name
            of the MLflow experiment.
        run_id: The study's MLflow run (study user attribute ``hpo.mlflow_run_id``); when
            None, the run named ``<study>-export`` in the study's experiment (made once).
        metrics: Scores to log on the run.

    Returns:
        The URI of the registered model version, ``models:/<study>/<version>``.
    """
    with _study_run(study_name, run_id), tempfile.TemporaryDirectory() as scratch:
        if metrics:
            mlflow.log_metrics(dict(metrics))
        mlflow.log_artifact(str(Path(export_dir) / "report.md"), artifact_path=ARTIFACT)
        code = Path(scratch) / "ensemble_model.py"
        code.write_text(_CODE)
        with warnings.catch_warnings():
            # No input example on purpose: inputs are files or arrays, not a fixed schema.
            warnings.filterwarnings("ignore", message=".*input example.*")
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(code),
                artifacts={ARTIFACT: str(export_dir)},
                code_paths=[_package_dir(search), _package_dir(trainer)],
                signature=_signature(),
                pip_requirements=_requirements(),
                registered_model_name=study_name,
            )
    return f"models:/{study_name}/{info.registered_model_version}"


def failure_line(err: BaseException, *, folder: Path, study: str) -> str:
    """The one line that says the export was not logged, why, and what to do about it."""
    return (
        f"The export was not logged to MLflow at {mlflow.get_tracking_uri()} ({_gist(err)}); "
        f"it is complete in {folder}: run `hpo export {study}` to log it once MLflow answers."
    )


def _gist(err: BaseException) -> str:
    """What went wrong, in a few words: MLflow's own text for an HTTP failure runs to lines."""
    text = " ".join(str(err).split()) or type(err).__name__
    status = re.search(r"error code (\d{3})", text)
    if status:
        return f"HTTP status {status.group(1)}"
    gist = next((s.lower() for s in _SYMPTOMS if s.lower() in text.lower()), text)
    return gist if len(gist) <= 160 else gist[:157] + "..."


def _signature() -> ModelSignature:
    # Only params: any input passes to `predict`, which checks it itself.
    return ModelSignature(inputs=None, params=ParamSchema([ParamSpec("tta", "string", None)]))


def _package_dir(package: Any) -> str:
    return str(Path(package.__file__).parent)


def _requirements() -> list[str]:
    pins = []
    for name in _REQUIREMENTS:
        try:
            # A local build tag (+cpu, +cu124) is not on PyPI; pin the public version.
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


@contextmanager
def _study_run(study_name: str, run_id: str | None) -> Iterator[None]:
    """Make the study's run active for the block, restoring its status afterwards."""
    active = mlflow.active_run()
    if run_id is not None and active is not None and active.info.run_id == run_id:
        yield
        return
    run_id = run_id or _export_run(study_name)
    client = mlflow.MlflowClient()
    status = client.get_run(run_id).info.status
    with _quiet_artifacts(), mlflow.start_run(run_id=run_id):
        yield
    if status != "RUNNING":
        client.set_terminated(run_id, status)


def _export_run(study_name: str) -> str:
    """Without a study run: the export run of the experiment named after the study (made once)."""
    client = mlflow.MlflowClient()
    experiment = _experiment(client, study_name)
    query = f"tags.`hpo.study` = '{study_name}' and tags.`hpo.role` = 'export'"
    found = client.search_runs([experiment], query, max_results=1)
    if found:
        return found[0].info.run_id
    tags = {"hpo.study": study_name, "hpo.role": "export"}
    run = client.create_run(experiment, tags=tags, run_name=f"{study_name}-export")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _experiment(client: mlflow.MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name)
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


@contextmanager
def _quiet_artifacts() -> Iterator[None]:
    """No per-file progress bars while the model's files are copied (they flood a log)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before

"""The study's image table as an MLflow dataset: which images, labels, groups and folds a run used.

Logged as a training input of the study run and of every trial run (the equivalent of
``mlflow.log_input(mlflow.data.from_pandas(df, name=...), context="training")`` for runs named
by id), so the runs table's Dataset column shows the data's name and digest. MLflow keeps the
table's schema, row count and digest, not its rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search import keys
from search.study.splits import HOLDOUT

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.entities import DatasetInput

    from trainer.sources import ImageTable

CONTEXT = "training"


def image_frame(table: ImageTable, fold_of: np.ndarray) -> pd.DataFrame:
    """One row per image: path, label (class name), group, fold (-1: holdout), holdout."""
    import pandas as pd

    folds = np.asarray(fold_of, dtype=np.int64)
    groups = table.groups if table.groups is not None else np.full(len(table), "")
    return pd.DataFrame(
        {
            "path": list(table.paths),
            "label": np.asarray(table.classes, dtype=object)[table.labels],
            "group": np.asarray(groups, dtype=str),
            "fold": folds,
            "holdout": folds == HOLDOUT,
        }
    )


def dataset_input(table: ImageTable, fold_of: np.ndarray) -> DatasetInput | None:
    """The image table as a training input of a run (its digest computed once here).

    None if MLflow cannot describe it: runs then have no dataset, tracking goes on.
    """
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    try:
        frame = image_frame(table, fold_of)
        dataset = mlflow.data.from_pandas(frame, source=_source(table), name=table.source)
        entity = dataset._to_mlflow_entity()
    except Exception:  # e.g. a source MLflow has no resolver for
        return None
    return DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, CONTEXT)])


def log_dataset(client: MlflowClient, run_id: str, entry: DatasetInput | None) -> None:
    """Record ``entry`` as an input of ``run_id`` (nothing if there is none)."""
    if entry is not None:
        client.log_inputs(run_id, datasets=[entry])


def _source(table: ImageTable) -> DatasetSource:
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if table.root is None:  # a built-in dataset: no file to point at
        return CodeDatasetSource({keys.SOURCE_NAME_TAG: table.source})
    return resolve_dataset_source(str(Path(table.source).resolve()))

"""The MLflow pyfunc model of an export: this file is the model's code.

`search.export.mlflow_model` logs this file "from code" with only the ``trainer`` package beside
it, so it imports nothing else of hpo: MLflow runs it (it ends by calling
`mlflow.models.set_model`) wherever the model is loaded, hpo installed or not. `load_context`
rebuilds the `Ensemble` from the export's safetensors weights, so

    mlflow.pyfunc.load_model(uri).predict(frame_with_path_column)

returns the same probabilities as `hpo predict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

ARTIFACT = "export"


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Predicts class probabilities with the export's `Ensemble`.

    ``predict`` accepts a DataFrame (or dict) with a ``path`` column of image files, a list of
    paths, an image batch ``(N, H, W, 3)`` (uint8, 16-bit, or float in 0..1), or a list of
    images of any size, mode and dtype. It returns a DataFrame with ``label`` and one
    ``prob_<class>`` column per class (rows of NaN and an empty label for files that cannot be
    read). ``params={"tta": "hflip"}`` overrides the export's test-time augmentation.
    """

    # MLflow's type-hint validation is off and `model_input` is deliberately not annotated:
    # this model takes several kinds of input and checks them itself.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Rebuild the ensemble from the logged export folder."""
        from trainer.inference.ensemble import Ensemble

        self.ensemble = Ensemble.load(context.artifacts[ARTIFACT])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Class probabilities of ``model_input`` (see the class docstring)."""
        from trainer.inference.predictions import probability_frame

        tta = (params or {}).get("tta")
        paths = _paths(model_input)
        if paths is not None:
            probs, _ = self.ensemble.predict_files([Path(p) for p in paths], tta=tta)
        else:
            probs = self.ensemble.predict(_images(model_input), tta=tta)
        return probability_frame(probs, self.ensemble.classes)


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
        "a list of image paths, or images (N, H, W, 3)."
    )


mlflow.models.set_model(EnsembleModel())

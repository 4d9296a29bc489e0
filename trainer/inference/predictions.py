"""Predictions as a table: the label and one probability column per class.

Shared by `hpo predict` (PyTorch or ONNX) and the MLflow model, so all three write the same
columns. Imports only numpy and pandas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def probability_frame(probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """``label`` plus one ``prob_<class>`` column per class; empty label for rows of NaN."""
    known = ~np.isnan(probs).any(axis=1)
    top = np.where(known, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), 0)
    labels = [classes[i] if ok else "" for i, ok in zip(top, known, strict=True)]
    columns = {f"prob_{name}": probs[:, i].astype(np.float64) for i, name in enumerate(classes)}
    return pd.DataFrame({"label": labels, **columns})

"""The MLflow pyfunc model's own code on in-memory images of every dtype (no MLflow store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.export.pyfunc_model import EnsembleModel
from tests.support.ensembles import member
from trainer.config import TrainConfig
from trainer.ensemble import Ensemble, Manifest


def _model(folder: Path) -> EnsembleModel:
    spec, _ = member(folder, "m0", TrainConfig(backbone="test_vit", image_size=32), seed=0)
    Manifest(("a", "b", "c"), (spec,)).write(folder)
    model = EnsembleModel()
    model.ensemble = Ensemble.load(folder, device="cpu")  # what load_context does
    return model


def test_16_bit_and_float_colour_batches_predict_like_uint8(tmp_path):
    model = _model(tmp_path)
    pixels = np.random.default_rng(4).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    expected = model.predict(None, pixels)

    for batch in (pixels.astype(np.uint16) * 257, pixels.astype(np.float32) / 255):
        got = model.predict(None, batch)
        np.testing.assert_allclose(got.filter(like="prob_"), expected.filter(like="prob_"), 1e-5)
        assert list(got["label"]) == list(expected["label"])
    one = model.predict(None, pixels[0].astype(np.uint16) * 257)  # one image, not a batch
    np.testing.assert_allclose(one.filter(like="prob_"), expected.filter(like="prob_")[:1], 1e-5)

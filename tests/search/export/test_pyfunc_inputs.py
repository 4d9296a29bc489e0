"""Predicting in memory and from files on hand-made exports: dtypes, TTA a space rules out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from search.export.predict import EXPORT_TTA, predict_to_csv
from search.export.pyfunc_model import EnsembleModel
from tests.support.ensembles import member
from trainer.config import TrainConfig
from trainer.inference.ensemble import Ensemble, Manifest


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


def test_tta_alone_takes_no_flip_the_exports_space_rules_out(tmp_path):
    # `--tta` alone meant hflip for an export without TTA, even one trained with hflip=False.
    no_flips = TrainConfig(backbone="test_vit", image_size=32, hflip=False)
    spec, _ = member(tmp_path / "export", "m0", no_flips, seed=0)
    Manifest(("a", "b", "c"), (spec,)).write(tmp_path / "export")
    pixels = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pixels[:, :, :10] = 230  # not mirror-symmetric: a flip would change the predictions
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    files = [tmp_path / f"{i}.png" for i in range(3)]

    alone, _ = predict_to_csv(tmp_path / "export", files[0].parent, tta=EXPORT_TTA, out="a.csv")
    plain, _ = predict_to_csv(tmp_path / "export", files[0].parent, tta="none", out="p.csv")
    flipped, _ = predict_to_csv(tmp_path / "export", files[0].parent, tta="hflip", out="h.csv")

    np.testing.assert_allclose(alone.filter(like="prob_"), plain.filter(like="prob_"))
    assert not np.allclose(flipped.filter(like="prob_"), plain.filter(like="prob_"))

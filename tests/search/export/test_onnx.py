"""ensemble.onnx on hand-made exports: weights, TTA views, mixed sizes and normalisations."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from search.export.onnx_model import OnnxEnsemble, OnnxExportError, write_onnx
from tests.support.ensembles import asymmetric_images, member
from trainer.config import TrainConfig
from trainer.images import resize_array
from trainer.inference.ensemble import Ensemble, Manifest
from trainer.inference.onnx_graph import OPSET, _antialiased_resize, export_onnx

CLASSES = ("bird", "cat", "dog")
VIT = TrainConfig(backbone="test_vit", image_size=32)
RESNET = TrainConfig(backbone="test_resnet", image_size=32)
SMALL = TrainConfig(backbone="test_efficientnet", image_size=24)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _export(folder: Path, configs, weights, *, tta: str = "none", imagenet: int | None = None):
    specs = []
    for i, (config, weight) in enumerate(zip(configs, weights, strict=True)):
        spec = replace(member(folder, f"m{i}", config, seed=i)[0], weight=weight)
        if i == imagenet:  # another normalisation than the test models' 0.5
            spec = replace(spec, mean=IMAGENET[0], std=IMAGENET[1])
        specs.append(spec)
    Manifest(CLASSES, tuple(specs), tta=tta).write(folder)
    return Ensemble.load(folder, device="cpu")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_vote_is_weighted_by_the_manifests_weights(tmp_path):
    ensemble = _export(tmp_path, [VIT, RESNET], [3.0, 1.0])
    images = asymmetric_images(5)

    members = ensemble.member_probs(images)

    np.testing.assert_allclose(ensemble.weights, [0.75, 0.25])
    np.testing.assert_allclose(ensemble.predict(images), 0.75 * members[0] + 0.25 * members[1])
    assert Manifest.read(tmp_path).members[0].weight == 3.0


@pytest.mark.parametrize("tta", ["none", "d4"])
def test_onnx_matches_the_pytorch_ensemble_with_weights_views_and_normalisations(tmp_path, tta):
    ensemble = _export(tmp_path, [VIT, RESNET], [0.7, 0.3], tta=tta, imagenet=1)
    path = export_onnx(ensemble, tmp_path / "e.onnx", metadata={"metric": "f1_macro"})
    images = asymmetric_images(6)

    got = _session(path).run(None, {"images": images})[0]

    assert got.shape == (6, 3)
    assert np.abs(got - ensemble.predict(images)).max() <= 1e-4
    if tta == "d4":  # the views are inside: without them the numbers differ
        assert np.abs(got - ensemble.predict(images, tta="none")).max() > 1e-3
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert meta["metric"] == "f1_macro" and meta["tta"] == tta and meta["image_size"] == "32"


def test_each_member_size_is_an_input_of_its_own(tmp_path):
    # The graph never resizes: each size's pixels come from outside, as training made them.
    ensemble = _export(tmp_path, [VIT, SMALL], [0.5, 0.5])
    path = export_onnx(ensemble, tmp_path / "e.onnx", metadata={})
    images = asymmetric_images(6)
    small = np.stack([resize_array(image, 24) for image in images])

    got = _session(path).run(None, {"images_24": small, "images_32": images})[0]

    assert ensemble.sizes == (24, 32)
    assert [i.name for i in _session(path).get_inputs()] == ["images_24", "images_32"]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["image_size"] == "32" and json.loads(meta["image_sizes"]) == [24, 32]
    assert np.abs(got - ensemble.predict(images)).max() <= 1e-4
    model = OnnxEnsemble(_session(path))
    assert np.abs(model.predict(images) - ensemble.predict(images)).max() <= 1e-4


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_the_antialiased_resize_is_exported_faithfully(tmp_path, mode):
    class Resize(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=(5, 7), mode=mode, antialias=True)

    x = torch.randn(2, 4, 12, 16)
    with _antialiased_resize():
        torch.onnx.export(
            Resize(), (x,), str(tmp_path / "r.onnx"), dynamo=False, opset_version=OPSET
        )
    session = _session(tmp_path / "r.onnx")

    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]

    assert np.abs(got - Resize()(x).numpy()).max() <= 1e-5


def test_onnx_ensemble_reads_files_and_names_the_unreadable_ones(tmp_path):
    ensemble = _export(tmp_path, [VIT], [1.0])
    check = write_onnx(tmp_path, ensemble, metadata={"study": "s", "metric": "accuracy"})
    Image.fromarray(asymmetric_images(1)[0]).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"no")

    model = OnnxEnsemble.load(tmp_path)
    probs, failed = model.predict_files([tmp_path / "a.png", tmp_path / "bad.png"])

    assert check.largest_difference <= 1e-4 and "8 random images" in check.sentence()
    assert model.classes == CLASSES and model.metric == "accuracy" and model.image_size == 32
    np.testing.assert_allclose(probs[0], ensemble.predict(asymmetric_images(1))[0], atol=1e-4)
    assert np.isnan(probs[1]).all() and list(failed) == [1]


def test_a_missing_onnx_file_is_a_clear_error(tmp_path):
    with pytest.raises(OnnxExportError, match="does not exist; export the study again"):
        OnnxEnsemble.load(tmp_path)


TINY = TrainConfig(backbone="test_resnet", image_size=16)


def test_members_of_other_sizes_see_the_same_pixels_from_files_as_in_pytorch(tmp_path):
    # Training and PyTorch predict decode each member's size straight from the file; the graph
    # once decoded at the largest size and resized inside (up to 62 grey levels apart at 16 px).
    ensemble = _export(tmp_path, [VIT, TINY], [0.5, 0.5])
    write_onnx(tmp_path, ensemble, metadata={})
    rng = np.random.default_rng(7)
    files = []
    for i, shape in enumerate([(50, 70), (97, 61), (33, 33), (128, 96)]):
        pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        pixels[:, : shape[1] // 3] = 230  # structure, not only noise
        Image.fromarray(pixels).save(tmp_path / f"real{i}.png")
        files.append(tmp_path / f"real{i}.png")

    got, _ = OnnxEnsemble.load(tmp_path).predict_files(files)
    expected, _ = ensemble.predict_files(files)

    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_export_check_runs_on_real_images_when_it_is_given_them(tmp_path):
    ensemble = _export(tmp_path, [VIT, TINY], [0.5, 0.5])
    real = asymmetric_images(70)
    images = {16: np.stack([resize_array(image, 16) for image in real]), 32: real}

    check = write_onnx(tmp_path, ensemble, metadata={}, images=images)

    assert check.images == 64 and check.largest_difference <= 1e-4  # at most 64 are run
    assert "on 64 holdout images at each member size" in check.sentence()

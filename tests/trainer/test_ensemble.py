"""The exported ensemble: loading, voting, TTA, file and array inputs, and every load error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.ensembles import asymmetric_images, member
from trainer.config import TrainConfig
from trainer.images import decode_image
from trainer.inference.ensemble import (
    Ensemble,
    ExportError,
    Manifest,
    hard_labels,
    vote_shares,
)
from trainer.models import normalization

CLASSES = ("bird", "cat", "dog")


def _export(folder: Path, configs: list[TrainConfig], *, tta: str = "none") -> list:
    pairs = [member(folder, f"m{i}", c, seed=i) for i, c in enumerate(configs)]
    Manifest(CLASSES, tuple(spec for spec, _ in pairs), tta=tta).write(folder)
    return [model for _, model in pairs]


def _reference(model: torch.nn.Module, images: np.ndarray, mean, std) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).numpy()


VIT = TrainConfig(backbone="test_vit", image_size=32)


def test_loaded_members_reproduce_the_saved_models(tmp_path):
    models = _export(tmp_path, [VIT, VIT])
    ensemble = Ensemble.load(tmp_path, device="cpu")
    images = asymmetric_images()

    members = ensemble.member_probs(images)

    mean, std = normalization(models[0])
    for i, model in enumerate(models):
        np.testing.assert_allclose(members[i], _reference(model, images, mean, std), atol=1e-6)
    np.testing.assert_allclose(ensemble.predict(images), members.mean(axis=0), atol=1e-7)
    assert ensemble.classes == CLASSES and members.shape == (2, 4, 3)


def test_hard_voting_counts_votes_and_breaks_ties_by_probability():
    members = np.array(
        [
            [[0.6, 0.3, 0.1], [0.1, 0.5, 0.4]],
            [[0.2, 0.7, 0.1], [0.1, 0.2, 0.7]],
        ]
    )
    np.testing.assert_allclose(vote_shares(members), [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    # Ties: sample 0 (0.4 vs 0.5 mean) goes to class 1, sample 1 (0.35 vs 0.55) to class 2.
    assert hard_labels(members).tolist() == [1, 2]


def test_tta_is_deterministic_and_changes_asymmetric_images(tmp_path):
    _export(tmp_path, [VIT])
    images = asymmetric_images()
    first = Ensemble.load(tmp_path, device="cpu").predict(images, tta="hflip")
    again = Ensemble.load(tmp_path, device="cpu").predict(images, tta="hflip")
    plain = Ensemble.load(tmp_path, device="cpu").predict(images, tta="none")

    np.testing.assert_array_equal(first, again)
    assert np.abs(first - plain).max() > 1e-3
    # hflip TTA is the mean of the image and its mirror.
    mirrored = Ensemble.load(tmp_path, device="cpu").predict(images[:, :, ::-1].copy())
    np.testing.assert_allclose(first, (plain + mirrored) / 2, atol=1e-6)


def test_manifest_tta_is_the_default_and_can_be_overridden(tmp_path):
    _export(tmp_path, [VIT], tta="flip4")
    images = asymmetric_images()
    assert Ensemble.load(tmp_path, device="cpu").tta == "flip4"
    overridden = Ensemble.load(tmp_path, tta="none", device="cpu")
    np.testing.assert_allclose(
        overridden.predict(images), Ensemble.load(tmp_path).predict(images, tta="none")
    )


def test_head_finetuned_member_with_frozen_batchnorm_loads_strictly(tmp_path):
    config = TrainConfig(backbone="test_resnet", finetune="head", image_size=32)
    models = _export(tmp_path, [config])
    ensemble = Ensemble.load(tmp_path, device="cpu")
    images = asymmetric_images()
    mean, std = normalization(models[0])
    np.testing.assert_allclose(
        ensemble.predict(images), _reference(models[0], images, mean, std), atol=1e-6
    )


def test_members_of_different_sizes_get_images_at_their_own_size(tmp_path):
    models = _export(tmp_path, [VIT, TrainConfig(backbone="test_vit", image_size=16)])
    ensemble = Ensemble.load(tmp_path, device="cpu")
    images = [asymmetric_images(1, 40)[0], asymmetric_images(1, 24)[0][:, :20]]

    members = ensemble.member_probs(images)

    assert ensemble.sizes == (16, 32) and members.shape == (2, 2, 3)
    from trainer.images import resize_array

    small = np.stack([resize_array(image, 16) for image in images])
    mean, std = normalization(models[1])
    np.testing.assert_allclose(members[1], _reference(models[1], small, mean, std), atol=1e-6)


def _write_modes(folder: Path) -> list[Path]:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (37, 50, 3), dtype=np.uint8)
    grey = Image.fromarray(rgb[:, :, 0])
    paths = {
        "rgb.jpg": Image.fromarray(rgb),
        "nested/deeper/grey.png": grey,
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((37, 50), 128, np.uint8)])),
        "palette.png": Image.fromarray(rgb).quantize(16),
        "sixteen.png": Image.fromarray((rng.integers(0, 65535, (21, 64))).astype(np.uint16)),
    }
    written = []
    for name, image in paths.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        written.append(path)
    return written


def test_files_of_any_mode_and_size_are_decoded_as_in_training(tmp_path):
    _export(tmp_path / "export", [VIT])
    files = _write_modes(tmp_path / "images")
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    ensemble = Ensemble.load(tmp_path / "export", device="cpu")

    probs, unreadable = ensemble.predict_files([*files, broken], batch_size=2)

    assert Image.open(files[-1]).mode.startswith("I")  # really a 16-bit image
    expected = ensemble.predict(np.stack([decode_image(f, 32) for f in files]))
    np.testing.assert_allclose(probs[: len(files)], expected, atol=1e-6)
    assert list(unreadable) == [len(files)] and np.isnan(probs[-1]).all()


def test_arrays_of_any_mode_are_accepted(tmp_path):
    _export(tmp_path, [VIT])
    ensemble = Ensemble.load(tmp_path, device="cpu")
    rng = np.random.default_rng(2)
    images = [
        rng.integers(0, 255, (20, 30), dtype=np.uint8),
        rng.integers(0, 255, (20, 30, 4), dtype=np.uint8),
        rng.integers(0, 65535, (20, 30), dtype=np.uint16),
        rng.random((20, 30)).astype(np.float32),
    ]
    probs = ensemble.predict(images)
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def _error(folder: Path) -> str:
    with pytest.raises(ExportError) as caught:
        Ensemble.load(folder, device="cpu")
    return str(caught.value)


def test_missing_folder_and_manifest_are_clear_errors(tmp_path):
    assert "does not exist" in _error(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "has no manifest.json" in _error(tmp_path / "empty")


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: "{not json",
        lambda m: json.dumps({k: v for k, v in m.items() if k != "members"}),
        lambda m: json.dumps({**m, "classes": ["only"]}),
        lambda m: json.dumps({**m, "format": 99}),
    ],
    ids=["not-json", "no-members", "one-class", "newer-format"],
)
def test_corrupt_manifest_is_a_clear_error(tmp_path, damage):
    _export(tmp_path, [VIT])
    manifest = tmp_path / "manifest.json"
    manifest.write_text(damage(json.loads(manifest.read_text())))
    message = _error(tmp_path)
    assert "is not a valid hpo manifest" in message and "hpo export" in message


def test_missing_changed_or_truncated_weights_are_clear_errors(tmp_path):
    _export(tmp_path, [VIT])
    weights = tmp_path / "members" / "m0.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert "does not match the checksum" in _error(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["members"][0]["sha256"] = ""  # no checksum: safetensors itself must refuse it
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert "cannot be read" in _error(tmp_path)
    weights.unlink()
    assert "is missing" in _error(tmp_path)


def test_class_count_mismatch_is_a_clear_error(tmp_path):
    spec, _ = member(tmp_path, "m0", VIT, seed=0, classes=4)
    Manifest(CLASSES, (spec,)).write(tmp_path)
    message = _error(tmp_path)
    assert "classifier for 4 classes" in message and "lists 3" in message


def test_loading_an_export_imports_neither_optuna_nor_mlflow(tmp_path):
    _export(tmp_path, [VIT])
    code = (
        "import sys\n"
        "from trainer.inference.ensemble import Ensemble\n"
        f"Ensemble.load({str(tmp_path)!r}, device='cpu')\n"
        "bad = [m for m in ('optuna', 'mlflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_colour_arrays_of_any_dtype_predict_like_their_uint8_pixels(tmp_path):
    # "Any size and mode" held for greyscale only: 16-bit or float colour raised TypeError.
    _export(tmp_path, [VIT])
    ensemble = Ensemble.load(tmp_path, device="cpu")
    pixels = np.random.default_rng(3).integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
    expected = ensemble.predict(list(pixels))

    deep = (pixels.astype(np.uint16) * 257, pixels / 255.0, (pixels / 255.0).astype(np.float32))
    for batch in deep:
        np.testing.assert_allclose(ensemble.predict(batch), expected, atol=1e-6)
        np.testing.assert_allclose(ensemble.predict(list(batch)), expected, atol=1e-6)
    opaque = np.concatenate([deep[0], np.full((2, 20, 30, 1), 65535, np.uint16)], axis=3)
    np.testing.assert_allclose(ensemble.predict(list(opaque)), expected, atol=1e-6)

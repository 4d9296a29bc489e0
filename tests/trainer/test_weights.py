"""Real ImageNet weights converted by position (`trainer.weights`), checked on real photos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_sample_images
from timm.data import ImageNetInfo

from tests.support.photos import lite0_file
from trainer.errors import UserError
from trainer.weights import convert_by_position, convert_file, packaged_weights, weights_dir

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> Path:
    return lite0_file(tmp_path_factory.mktemp("weights"))


def _imagenet_top5(model: torch.nn.Module, photo: np.ndarray) -> list[tuple[str, float]]:
    """The five most likely ImageNet classes of ``photo`` at 224 px (timm's lite0 preprocessing)."""
    x = torch.tensor(photo).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        probs = model.eval()((x - 0.5) / 0.5).softmax(-1)[0]
    top = probs.topk(5)
    info = ImageNetInfo()
    return [(info.index_to_description(int(i)), float(p)) for p, i in zip(*top, strict=True)]


def test_converted_lite0_names_what_is_in_real_photos(lite0):
    # Measured: the temple photo -> bell cote 0.29, boathouse, lakeside, palace, castle; the
    # flower -> daisy 0.14, bee, pot. A random network spreads ~0.001 over the 1000 classes.
    model = timm.create_model(LITE0, pretrained=True, pretrained_cfg_overlay={"file": str(lite0)})
    temple, flower = load_sample_images().images
    buildings = {"bell cote, bell cot", "palace", "castle", "boathouse", "monastery", "church"}
    temple_top = _imagenet_top5(model, temple)
    assert temple_top[0][0] in buildings and temple_top[0][1] > 0.1, temple_top
    assert "daisy" in [name for name, _ in _imagenet_top5(model, flower)]
    random_top = _imagenet_top5(timm.create_model(LITE0), flower)
    assert random_top[0][1] < 0.05, random_top


def test_conversion_is_cached_by_content(lite0):
    again = packaged_weights(LITE0, directory=lite0.parent)
    assert again == lite0
    assert os.stat(again).st_mtime_ns == os.stat(lite0).st_mtime_ns  # not written twice
    assert not list(lite0.parent.glob("*.tmp"))


def test_default_folder_is_in_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "c"))
    assert weights_dir() == tmp_path / "c" / "weights"


def test_a_damaged_conversion_is_written_again(lite0, tmp_path):
    copy = tmp_path / lite0.name
    copy.write_bytes(lite0.read_bytes()[:1000])  # a crash cut it short
    assert packaged_weights(LITE0, directory=tmp_path) == copy
    assert copy.stat().st_size == lite0.stat().st_size


def test_another_architecture_is_refused_in_one_sentence(tmp_path):
    source = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), source)
    with pytest.raises(UserError) as caught:
        convert_file(source, LITE0, directory=tmp_path)
    message = str(caught.value)
    assert "cannot be converted by position" in message and "\n" not in message
    assert not list(tmp_path.glob("*.safetensors"))


def test_a_shape_out_of_place_is_refused_naming_the_tensor():
    template = timm.create_model("test_resnet").state_dict()
    source = dict(template)
    names = list(source)
    source[names[0]] = torch.zeros(1, 2, 3)
    with pytest.raises(UserError, match=rf"tensor 0 \('{names[0]}'\) has shape \(1, 2, 3\)"):
        convert_by_position(source, template, "test_resnet")


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    source = tmp_path / "junk.pth"
    source.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        convert_file(source, LITE0, directory=tmp_path)
    tensors = tmp_path / "one.safetensors"
    save_file({"w": torch.zeros(2)}, str(tensors))
    with pytest.raises(UserError, match="holds 1 tensors"):
        convert_file(tensors, LITE0, directory=tmp_path)


def test_a_backbone_no_package_ships_is_refused():
    with pytest.raises(UserError, match="No installable package ships weights for backbone"):
        packaged_weights("resnet18")

"""Model building: local weights, head replacement, freezing and the user errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from trainer.config import TrainConfig
from trainer.errors import UserError
from trainer.models import (
    build_model,
    check_backbone,
    close_backbones,
    normalization,
    trainable_parameters,
)

REPO = Path(__file__).resolve().parents[2]


def _source_model(name: str = "test_resnet") -> torch.nn.Module:
    """A 1000-class model with reproducible random weights and non-default BN statistics."""
    torch.manual_seed(123)
    model = timm.create_model(name, num_classes=1000)
    for buffer_name, buffer in model.named_buffers():
        if buffer_name.endswith("running_mean"):
            buffer.uniform_(-1, 1)
    return model


def _backbone_items(state: dict, head: str) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(head)}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_backbone_and_replace_head(tmp_path, suffix):
    source = _source_model().state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(source, str(path))
    else:
        torch.save(source, path)

    model = build_model(TrainConfig(backbone="test_resnet", pretrained=str(path)), num_classes=10)

    loaded = model.state_dict()
    expected = _backbone_items(source, "fc.")
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert model.get_classifier().out_features == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    random_init = build_model(TrainConfig(backbone="test_resnet"), num_classes=10).state_dict()
    assert not torch.equal(random_init["conv1.0.weight"], expected["conv1.0.weight"])


def test_wrapped_checkpoint_is_unwrapped(tmp_path):
    source = _source_model().state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": source, "epoch": 3}, path)
    model = build_model(TrainConfig(backbone="test_resnet", pretrained=str(path)), num_classes=4)
    assert torch.equal(model.state_dict()["conv1.0.weight"], source["conv1.0.weight"])


class _Payload:
    """Unpickling this would run code (it writes a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_code_in_weights_file_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _source_model().state_dict(), "x": _Payload(str(marker))}, path)
    with pytest.raises(UserError, match="could not be loaded"):
        build_model(TrainConfig(backbone="test_resnet", pretrained=str(path)), num_classes=10)
    assert not marker.exists()


def test_weights_of_another_backbone_do_not_fit(tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file(_source_model("test_vit").state_dict(), str(path))
    with pytest.raises(UserError, match="does not fit backbone 'test_resnet'"):
        build_model(TrainConfig(backbone="test_resnet", pretrained=str(path)), num_classes=10)


def test_weights_with_wrong_shapes_are_a_user_error(tmp_path):
    state = _source_model().state_dict()
    state["conv1.0.weight"] = torch.zeros(5, 3, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError, match="could not be loaded into backbone 'test_resnet'"):
        build_model(TrainConfig(backbone="test_resnet", pretrained=str(path)), num_classes=10)


def test_missing_weights_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_model(TrainConfig(pretrained=str(tmp_path / "nope.pth")), num_classes=10)


def test_weights_file_with_unsupported_extension(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"not weights")
    with pytest.raises(UserError, match="unsupported extension"):
        build_model(TrainConfig(pretrained=str(path)), num_classes=10)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UserError) as caught:
        build_model(TrainConfig(backbone="resnet81"), num_classes=10)
    message = str(caught.value)
    assert "Unknown backbone 'resnet81'" in message
    assert "resnet18" in message
    assert "timm.list_models()" in message


def test_hub_and_local_dir_backbones_are_left_to_timm():
    # `hpo run` checks every backbone a space can pick before training: names timm resolves
    # only when it builds the model must pass that check.
    check_backbone("hf-hub:timm/resnet18.a1_in1k", "space.py")
    check_backbone("local-dir:/models/mine", "space.py")
    with pytest.raises(UserError, match=r"Unknown backbone 'resnet81' in space\.py"):
        check_backbone("resnet81", "space.py")


def test_close_backbones():
    names = close_backbones("test_resnt", limit=3)
    assert names[0] == "test_resnet"
    assert len(names) <= 3
    assert close_backbones("zzzzzzzz") == []


def test_backbone_without_hub_weights():
    with pytest.raises(UserError, match="no pretrained weights for backbone 'test_coatnet'"):
        build_model(TrainConfig(backbone="test_coatnet", pretrained=True), num_classes=10)


def test_pretrained_true_offline_fails_fast_with_a_clear_error(tmp_path):
    # HF_HUB_OFFLINE only works when set before huggingface_hub is imported, hence a fresh
    # interpreter; an empty HF_HOME makes sure no cached copy satisfies the request.
    code = textwrap.dedent(
        """
        from trainer.config import TrainConfig
        from trainer.errors import UserError
        from trainer.models import build_model
        try:
            build_model(TrainConfig(backbone="test_resnet", pretrained=True), num_classes=10)
        except UserError as err:
            print(err)
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "could not be downloaded" in result.stdout
    assert "pretrained='/path/file.safetensors'" in result.stdout


def test_drop_rates_reach_the_model():
    model = build_model(TrainConfig(backbone="test_resnet", dropout=0.3, drop_path=0.2), 10)
    assert model.drop_rate == pytest.approx(0.3)
    assert any(type(m).__name__ == "DropPath" for m in model.modules())


def test_backbone_that_rejects_drop_path():
    assert build_model(TrainConfig(backbone="ghostnet_050"), num_classes=3) is not None
    with pytest.raises(UserError, match="does not support drop_path; set drop_path=0"):
        build_model(TrainConfig(backbone="ghostnet_050", drop_path=0.1), num_classes=3)


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_vit"])
def test_finetune_head_trains_only_the_classifier(backbone):
    model = build_model(TrainConfig(backbone=backbone, finetune="head"), num_classes=5)
    classifier = set(map(id, model.get_classifier().parameters()))
    assert {id(p) for p in trainable_parameters(model)} == classifier

    stats_before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model(torch.randn(4, 3, 32, 32) * 3 + 1).sum().backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (id(parameter) in classifier), name
    # Frozen BatchNorm keeps its running statistics even in train mode.
    after = model.state_dict()
    assert all(torch.equal(stats_before[k], after[k]) for k in stats_before)


def test_finetune_full_trains_everything():
    model = build_model(TrainConfig(backbone="test_resnet", finetune="full"), num_classes=5)
    assert len(trainable_parameters(model)) == len(list(model.parameters()))


def test_normalization_comes_from_the_model():
    assert normalization(build_model(TrainConfig(backbone="test_resnet"), 3)) == (
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    )
    mean, std = normalization(build_model(TrainConfig(backbone="test_efficientnet"), 3))
    assert mean == pytest.approx((0.485, 0.456, 0.406))
    assert std == pytest.approx((0.229, 0.224, 0.225))

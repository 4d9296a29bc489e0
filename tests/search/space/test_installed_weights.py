"""`installed_weights` in a space file: packaged ImageNet weights by path, or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.space import SpaceError
from search.space.spacefile import load_space


def test_a_space_gets_the_converted_file_of_an_installed_package(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    space = tmp_path / "s.py"
    space.write_text(
        "from search.space import installed_weights\n"
        'backbone = "tf_efficientnet_lite0"\n'
        'pretrained = installed_weights("tf_efficientnet_lite0")\n'
    )
    path = Path(load_space(space).fixed["pretrained"])
    assert path.parent == tmp_path / "cache" / "weights" and path.is_file()
    assert load_space(space).fixed["pretrained"] == str(path)  # the same file, not a new one


def test_a_backbone_no_package_ships_is_an_error_at_its_line(tmp_path):
    space = tmp_path / "s.py"
    space.write_text(
        'from search.space import installed_weights\n\npretrained = installed_weights("resnet18")\n'
    )
    with pytest.raises(SpaceError) as caught:
        load_space(space)
    assert str(caught.value).startswith(
        f"{space}:3: pretrained = installed_weights('resnet18') failed: No installable package "
        "ships weights for backbone 'resnet18'; use one of tf_efficientnet_lite0"
    )

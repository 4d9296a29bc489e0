"""Pretrained weights checked before a study exists; a failed start locks nothing.

Issue 23 item 4 (a ``pretrained`` dict per backbone) and issue 24 item 5.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import timm
from optuna.trial import TrialState
from safetensors.torch import save_file

from search.cli.main import main
from search.engine import objective as objective_module
from tests.support.runs import DIGITS_SPACE, error_lines, study_exists
from trainer.errors import ConfigError


@pytest.fixture
def space(tmp_path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(DIGITS_SPACE)
    return path


def weights(tmp_path: Path, backbone: str) -> str:
    """A safetensors file of ``backbone``'s tensors (random, but of that architecture)."""
    path = tmp_path / f"{backbone}.safetensors"
    save_file(timm.create_model(backbone).state_dict(), str(path))
    return str(path)


def test_weights_of_another_architecture_are_refused_before_the_study_exists(
    space, tmp_path, capsys
):
    vit = weights(tmp_path, "test_vit")
    assert main(["run", str(space), f"pretrained={vit}"]) == 2
    (line,) = error_lines(capsys)  # one line: no list of thousands of tensor names
    assert line.startswith(f"hpo: error: Pretrained weights file '{vit}' does not fit backbone")
    assert "Unexpected keys" not in line and len(line) < 400
    assert not study_exists("tiny")
    assert main(["run", str(space), "--trials", "1"]) == 0  # the corrected command works


def test_a_corrupt_weights_file_is_refused_before_the_study_exists(space, tmp_path, capsys):
    corrupt = tmp_path / "cut.safetensors"
    corrupt.write_bytes(Path(weights(tmp_path, "test_resnet")).read_bytes()[:5000])
    assert main(["run", str(space), f"pretrained={corrupt}"]) == 2
    (line,) = error_lines(capsys)
    assert "could not be loaded into backbone 'test_resnet'" in line
    assert not study_exists("tiny")


def test_a_start_that_failed_in_its_first_trial_does_not_lock_the_study(space, monkeypatch, capsys):
    def broken_setting(config, *args, **kwargs):
        raise ConfigError("lr=0.004 is wrong for this test; use another.")

    with monkeypatch.context() as patch:
        patch.setattr(objective_module, "fit", broken_setting)
        assert main(["run", str(space), "--trials", "1"]) == 2
    capsys.readouterr()
    # The same command again keeps the failed trial and its reason ...
    with monkeypatch.context() as patch:
        patch.setattr(objective_module, "fit", broken_setting)
        assert main(["run", str(space), "--trials", "1"]) == 2
    study = optuna.load_study(study_name="tiny", storage="sqlite:///studies/tiny/study.db")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    # ... and the corrected space is not refused as "a different search space".
    assert main(["run", str(space), "--trials", "1", "lr=0.002"]) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="tiny", storage="sqlite:///studies/tiny/study.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert "had no finished trial" in capsys.readouterr().err


def test_a_study_with_a_finished_trial_keeps_its_identity(space, capsys):
    assert main(["run", str(space), "--trials", "1"]) == 0
    capsys.readouterr()
    assert main(["run", str(space), "--trials", "1", "lr=0.002"]) == 2
    assert "different search space (lr changed)" in error_lines(capsys)[-1]


def test_a_pretrained_dict_gives_each_searched_backbone_its_own_file(space, tmp_path):
    files = {name: weights(tmp_path, name) for name in ("test_resnet", "test_vit")}
    text = DIGITS_SPACE.replace(
        'backbone = "test_resnet"', 'backbone = choice("test_resnet", "test_vit")'
    )
    text = text.replace("import loguniform", "import choice, loguniform")
    text += f"pretrained = {files!r}\n"
    text += 'baselines = [{"backbone": "test_resnet"}, {"backbone": "test_vit"}]\n'
    space.write_text(text)
    assert main(["run", str(space), "--trials", "2"]) == 0
    study = optuna.load_study(study_name="tiny", storage="sqlite:///studies/tiny/study.db")
    used = {t.params["backbone"]: t.user_attrs["config"]["pretrained"] for t in study.trials}
    assert used == files


def test_a_searched_backbone_without_weights_is_refused_naming_it(space, tmp_path, capsys):
    text = DIGITS_SPACE.replace(
        'backbone = "test_resnet"', 'backbone = choice("test_resnet", "test_vit")'
    )
    text = text.replace("import loguniform", "import choice, loguniform")
    text += f"pretrained = {{'test_resnet': {weights(tmp_path, 'test_resnet')!r}}}\n"
    space.write_text(text)
    assert main(["run", str(space)]) == 2
    (line,) = error_lines(capsys)
    assert f"{space}:14: pretrained names no weights for backbone 'test_vit';" in line
    assert not study_exists("tiny")

"""`--gpus` names GPUs this machine has, or the run stops before its study exists (issue 24, 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.cli.main import main
from tests.support.runs import DIGITS_SPACE, error_lines, study_exists


@pytest.fixture
def space(tmp_path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(DIGITS_SPACE)
    return path


def test_a_gpu_this_machine_lacks_is_refused_before_the_study_exists(space, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test whatever happens
    count = torch.cuda.device_count()
    assert main(["run", str(space), "--gpus", "7", "--trials", "1"]) == 2
    (line,) = error_lines(capsys)
    there = f"{count} GPU(s)" if count else "no GPU that CUDA can use"
    assert line.startswith("hpo: error: --gpus 7 names GPU 7, but this machine has " + there)
    assert not study_exists("tiny")


def test_the_gpu_check_names_the_gpus_there_are(space, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main(["run", str(space), "--gpus", "1,7", "--trials", "1"]) == 2
    assert error_lines(capsys) == [
        "hpo: error: --gpus 1,7 names GPU 7, but this machine has 2 GPU(s), numbered 0 to 1; "
        "pass GPU numbers that exist, or leave --gpus out."
    ]

"""The folder studies/<name>/ belongs to one study: another of the same name is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from search.engine.run import RunRequest, prepare
from search.export.study_source import storage_source
from search.study.storage import StudyError

SPACE = "backbone = 'test_vit'\nimage_size = 32\nfolds = 2\ntracking = 'none'\nholdout = 0.0\n"


def _data(root: Path) -> str:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return str(root)


def _prepare(tmp_path: Path, storage: str | None = None, seed: int = 0):
    if not Path("space.py").exists():
        Path("space.py").write_text(SPACE + f"data = {_data(tmp_path / 'data')!r}\n")
    request = RunRequest(
        space="space.py", overrides=(f"seed={seed}",), study="s", storage=storage, progress=False
    )
    return prepare(request, Console(width=200))


def _best_checkpoint(run) -> Path:
    """What the first study's best trial keeps in the folder (as CheckpointHook writes it)."""
    folder = run.place.folder / "trials" / "0"
    folder.mkdir(parents=True)
    (folder / "fold0.safetensors").write_bytes(b"the first study's weights")
    return folder / "fold0.safetensors"


def test_a_study_of_the_same_name_in_another_storage_is_refused(tmp_path):
    first = _prepare(tmp_path)
    kept = _best_checkpoint(first)

    with pytest.raises(StudyError) as refused:
        _prepare(tmp_path, storage="sqlite:///elsewhere.db", seed=1)

    message = str(refused.value)
    assert "studies/s" in message and "elsewhere.db" in message and "--study" in message
    assert len(message.splitlines()) == 1
    assert kept.read_bytes() == b"the first study's weights"
    assert not Path("elsewhere.db").exists() or "s" not in _study_names("sqlite:///elsewhere.db")


def _study_names(url: str) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(url)]


def test_the_same_study_resumes_in_its_folder(tmp_path):
    first = _prepare(tmp_path)
    again = _prepare(tmp_path)
    assert again.place.folder == first.place.folder


def test_export_refuses_a_folder_of_another_study(tmp_path, monkeypatch):
    _best_checkpoint(_prepare(tmp_path))
    # Study 's' of another storage, run from another directory (so in another folder).
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    storage = f"sqlite:///{other / 'b.db'}"
    space = str(tmp_path / "space.py")
    prepare(RunRequest(space=space, study="s", storage=storage), Console(width=200))
    monkeypatch.chdir(tmp_path)

    with pytest.raises(StudyError, match="studies/s"):
        storage_source("s", storage=storage, data=None)


def test_a_folder_left_by_a_deleted_study_is_taken_over(tmp_path):
    first = _prepare(tmp_path)
    (first.place.folder / "study.db").unlink()  # the user deleted the study, not its folder
    again = _prepare(tmp_path, seed=1)
    assert again.study.user_attrs["hpo.identity"]


def test_processes_that_create_the_study_at_once_all_get_its_folder(tmp_path):
    # Each process that finds no study sets it up, with an id of its own; the last id stored
    # wins, and a folder that names this storage stays this study's whatever id it holds.
    first = _prepare(tmp_path)
    first.study.set_user_attr("hpo.study_uid", "another process's id")
    again = _prepare(tmp_path)
    owner = json.loads((again.place.folder / "study.json").read_text())
    assert owner["uid"] == "another process's id" and owner["storage"] == "default"


def test_another_spelling_of_the_same_storage_is_the_same_study(tmp_path):
    first = _prepare(tmp_path, storage="sqlite:///shared.db")
    spelled = f"sqlite:///{Path('shared.db').resolve()}"
    assert _prepare(tmp_path, storage=spelled).study.user_attrs == first.study.user_attrs

"""Which study owns the folder ``studies/<name>/``: its checkpoints and export belong to it.

Two studies of the same name in two storages would otherwise share one folder, and each
would delete or overwrite the other's checkpoints. A study gets a random id (a study user
attribute) when it is created; the folder holds ``study.json`` with that id and the storage,
and a study whose id differs is refused before it writes anything there.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from search import keys
from search.study.storage import StudyError, StudyPlace, redact_url

OWNER_FILE = "study.json"
DEFAULT = "default"  # study.json's storage when it is the folder's own study.db


def check_folder(storage: BaseStorage, place: StudyPlace) -> None:
    """Before a run opens or creates the study: its folder is its own, or nobody's.

    The folder is the study's when ``study.json`` names this storage (a folder left by a study
    deleted from it is taken over), or another spelling of it that holds this study's id.

    Raises:
        StudyError: The folder belongs to a study of the same name in another storage.
    """
    owner = read_owner(place.folder)
    if owner is None or owner.get("storage") == _storage_of(place):
        return
    try:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(place.name))
    except KeyError:  # a new study
        attrs = {}
    if attrs.get(keys.STUDY_UID_ATTR) is None or attrs[keys.STUDY_UID_ATTR] != owner.get("uid"):
        raise _refusal(place, owner)


def check_owner(study: optuna.Study, place: StudyPlace) -> None:
    """A study that is read (export, warm start) owns its folder, or nobody does.

    Raises:
        StudyError: The folder belongs to a study of the same name in another storage.
    """
    owner = read_owner(place.folder)
    if owner is None or owner.get("storage") == _storage_of(place):
        return
    if owner.get("uid") != study.user_attrs.get(keys.STUDY_UID_ATTR):
        raise _refusal(place, owner)


def claim_folder(study: optuna.Study, place: StudyPlace) -> None:
    """Write the study's id and storage into its folder (after `check_folder` allowed it).

    A study created before folders were bound gets its id now. Processes that created the
    study at the same moment may each have written an id; the last one stored wins.

    Raises:
        StudyError: A study of the same name in another storage claimed the folder meanwhile.
    """
    uid = study.user_attrs.get(keys.STUDY_UID_ATTR)
    if uid is None:
        uid = uuid.uuid4().hex
        study.set_user_attr(keys.STUDY_UID_ATTR, uid)
    owner = read_owner(place.folder)
    if owner is not None and (
        owner.get("uid") == uid or owner.get("storage") != _storage_of(place)
    ):
        return  # ours (perhaps through another spelling of its storage: the ids agree)
    mine = {"study": place.name, "uid": uid, "storage": _storage_of(place)}
    _write_owner(place.folder, mine, replace=owner is not None)
    check_owner(study, place)  # a study of another storage that claimed it at the same moment


def read_owner(folder: Path) -> dict[str, Any] | None:
    """The ``study.json`` of a study folder, or None when there is none (or it is unreadable)."""
    try:
        value = json.loads((Path(folder) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_owner(folder: Path, owner: dict[str, Any], *, replace: bool) -> None:
    """Write ``study.json`` whole; without ``replace`` only if no study wrote one first."""
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{OWNER_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(owner, indent=1) + "\n")
    try:
        if replace:
            os.replace(temporary, folder / OWNER_FILE)
        else:
            os.link(temporary, folder / OWNER_FILE)  # fails if another process got there first
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)


def _storage_of(place: StudyPlace) -> str:
    """How ``study.json`` names a storage: "default" for the folder's own study.db (which
    moves with the folder), a SQLite file by its absolute path, else the URL without its
    password."""
    url = place.storage_url
    if url == StudyPlace.of(place.name).storage_url:
        return DEFAULT
    if url.startswith("sqlite:///"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
    return redact_url(url)


def _refusal(place: StudyPlace, owner: dict[str, Any]) -> StudyError:
    where = _shown(place.folder)
    storage = owner.get("storage", "another storage")
    return StudyError(
        f"The folder {where} holds the checkpoints of study '{place.name}' in "
        f"{f'{where}study.db' if storage == DEFAULT else storage}, not of the one in "
        f"{redact_url(place.storage_url)}; pass --study ANOTHER_NAME so that this study gets "
        "its own folder (or delete the folder if that study is gone)."
    )


def _shown(folder: Path) -> str:
    """The folder relative to the working directory when it is below it (studies/NAME)."""
    try:
        return f"{Path(folder).relative_to(Path.cwd())}/"
    except ValueError:
        return f"{folder}/"


def trials_dir(study_folder: Path) -> Path:
    """Where the trial folders of a study live."""
    return Path(study_folder) / "trials"


def trial_dir(study_folder: Path, number: int) -> Path:
    """The checkpoint folder of trial ``number``."""
    return trials_dir(study_folder) / str(number)

"""What an export reads: a study, its place and settings, and its data when needed.

`run_source` is the study that `hpo run` just ran (everything already in memory);
`storage_source` is a study found by name in its storage (`hpo export STUDY`), with settings
read from the storage alone and data read only when the holdout is scored.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from search import keys
from search.space.settings import SETTINGS, StudySettings
from search.study.folder import check_owner
from search.study.storage import StudyError, StudyPlace, load_hpo_study

if TYPE_CHECKING:
    from search.context import StudyRun
    from trainer.sources import ImageTable


@dataclass(frozen=True)
class StudySource:
    """What an export reads: the study, its place and settings, and its data on demand."""

    study: optuna.Study
    place: StudyPlace
    settings: StudySettings
    labels: Callable[[], np.ndarray]
    images: Callable[[int], np.ndarray]


def run_source(run: StudyRun) -> StudySource:
    """What the export of a study that just ran reads: everything is in memory already."""
    settings = run.space.settings
    return StudySource(run.study, run.place, settings, lambda: run.table.labels, _images(run))


def _images(run: StudyRun) -> Callable[[int], np.ndarray]:
    return lambda size: run.data.images(size).images


def storage_source(name: str, *, storage: str | None, data: str | None) -> StudySource:
    """What the export of a study found by name in its storage reads; data is read lazily.

    Raises:
        StudyError: The study does not exist.
    """
    place = StudyPlace.of(name, storage)
    study = load_hpo_study(place)
    check_owner(study, place)  # the checkpoints in its folder must be its own
    settings = stored_settings(study)
    reader = _DataReader(study, data or settings.data)
    return StudySource(study, place, settings, reader.labels, reader.images)


def stored_settings(study: optuna.Study) -> StudySettings:
    """The study's settings from its storage alone.

    Identity settings come from the stored identity. Run control (``top_k``, ``ensemble``,
    ``tta``, ``tracking``) is not part of it: it comes from the study user attribute
    ``hpo.run_control`` (the last run's values) when `hpo run` stored one, else from the
    literal assignments of the stored space file, read without running it.
    """
    attrs = study.user_attrs
    settings = _literal_settings(attrs.get(keys.SPACE_SOURCE_ATTR, ""))
    settings.update(attrs.get(keys.RUN_CONTROL_ATTR, {}))
    settings.update(attrs[keys.IDENTITY_ATTR]["settings"])
    # metric and seed, where the study fixed them, are stored with the fixed values.
    fixed = attrs[keys.IDENTITY_ATTR].get("fixed", {})
    settings.update({k: v for k, v in fixed.items() if k in SETTINGS and SETTINGS[k].trainer})
    settings["data"] = attrs[keys.DATA_ATTR]
    return StudySettings.from_dict(settings)


def _literal_settings(source: str) -> dict[str, Any]:
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return {}
    found = {}
    for node in body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in SETTINGS:
            try:
                found[target.id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return found


class _DataReader:
    """The study's data, read once and only when needed (labels for the holdout, images)."""

    def __init__(self, study: optuna.Study, data: str) -> None:
        self.study, self.data = study, data

    @functools.cached_property
    def table(self) -> ImageTable:
        from trainer.sources import load_table

        table = load_table(self.data)
        if table.content_id != self.study.user_attrs[keys.CONTENT_ID_ATTR]:
            raise StudyError(
                f"Data '{self.data}' is not the data study '{self.study.study_name}' ran on "
                "(files, labels or groups differ); pass the study's data with --data."
            )
        return table

    def labels(self) -> np.ndarray:
        return self.table.labels

    def images(self, size: int) -> np.ndarray:
        from trainer.cache import cached_images

        return cached_images(self.table, size, progress=False).images

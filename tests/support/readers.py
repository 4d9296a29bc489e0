"""Reading a study from a test while another process creates and runs it."""

from __future__ import annotations

import optuna
from sqlalchemy.exc import IntegrityError, OperationalError


def study_or_none(name: str, storage: str) -> optuna.Study | None:
    """The study, or None while the other process is still setting its storage up.

    KeyError: the study is not created yet. IntegrityError, OperationalError: optuna.load_study
    creates the schema when it is missing, and so did the other process a moment ago (a
    duplicate alembic_version row, "table studies already exists").
    """
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except (KeyError, IntegrityError, OperationalError):
        return None

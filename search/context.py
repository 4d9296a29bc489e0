"""The context of one `hpo run` process: what the user asked for and what the study is made of.

Hooks (MLflow tracking, checkpoints) and the export receive a `StudyRun`; this module imports
nothing of the engine, so every layer below the engine can name it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console

from search.console import make_console
from search.hooks import Hooks

if TYPE_CHECKING:
    import optuna

    from search.space.spacefile import Space
    from search.study.data import StudyData
    from search.study.storage import StudyPlace
    from trainer.sources import ImageTable


@dataclass(frozen=True)
class RunRequest:
    """What the user asked `hpo run` for (command-line flags beat the space file)."""

    space: str
    overrides: Sequence[str] = ()
    trials: int | None = None
    timeout: float | None = None
    study: str | None = None
    storage: str | None = None
    worker: int = 0
    workers: int = 1
    heartbeat: int | None = None
    progress: bool = True
    export: bool = True
    warm_start: str | None = None  # a study whose finished trials this one starts from


@dataclass(frozen=True)
class StudyRun:
    """Everything a running study is made of; hooks and the export are built from it."""

    request: RunRequest
    space: Space
    place: StudyPlace
    table: ImageTable
    study: optuna.Study
    data: StudyData
    target: int
    console: Console = field(default_factory=make_console)


# Builds one hook of a run (MLflow tracking, checkpoints); see `default_hooks`.
HookFactory = Callable[[StudyRun], Hooks]

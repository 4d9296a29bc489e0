"""Which MLflow run is the study's: one experiment per study, one study run for all its workers.

A worker on another machine must nest its trials under the same study run, so the run's id is
kept in the shared Optuna storage (study user attr ``hpo.mlflow_run_id``). Workers that start a
new study together each look for the study run (tag ``hpo.study_key``) before creating one; if
two get created anyway, all keep the oldest, and one that chose before it could see the other's
joins the stored one later (`StudyRunElection.follow`), moving its trials there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from search import keys
from search.tracking import artifacts as content
from search.tracking.ui_address import VIEW_TAG, trials_view

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from search.context import StudyRun


@contextmanager
def local_store_lock(uri: str) -> Iterator[None]:
    """Hold a file lock beside a local SQLite tracking store (no-op for other stores).

    MLflow creates and migrates a new SQLite store on first use; several processes doing that
    at once corrupt the migration ("table _alembic_tmp_... already exists").
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path):
        yield


class StudyRunElection:
    """Finds, creates or joins the study's run, and keeps this process's trials under it.

    Args:
        client: The tracking store.
        run: The running study.
        tags: Provenance tags (versions, commit, host) for a study run this process creates.
    """

    def __init__(self, client: MlflowClient, run: StudyRun, tags: dict[str, str]) -> None:
        self.client, self.run, self.tags = client, run, tags
        self.name = run.place.name
        self.experiment_id: str | None = None
        self.study_run_id: str | None = None
        self.created: set[str] = set()  # study runs this process created (and may drop)
        self.mine: list[str] = []  # trial runs this process created

    def open(self) -> str:
        """The study run's id, found or created, and reopened (RUNNING) when a study resumes."""
        self.experiment_id = self._experiment()
        run_id = self._stored() or self._find_or_create()
        self.client.update_run(run_id, status="RUNNING")
        self.study_run_id = run_id
        return run_id

    def store(self) -> None:
        """Keep the study run's id in the Optuna storage, for the other workers."""
        study = self.run.study
        if self.study_run_id and study.user_attrs.get(keys.STUDY_RUN_ATTR) != self.study_run_id:
            study.set_user_attr(keys.STUDY_RUN_ATTR, self.study_run_id)

    def follow(self, study: optuna.Study) -> None:
        """Join the study run another worker settled on at the same moment, if any."""
        stored = study.user_attrs.get(keys.STUDY_RUN_ATTR)
        if not stored or stored == self.study_run_id or not self._usable(stored):
            return  # a worker writing to another tracking store must not move our runs
        dropped, self.study_run_id = self.study_run_id, stored
        for run_id in self.mine:
            self.client.set_tag(run_id, keys.PARENT_TAG, stored)
        if dropped in self.created:
            self.client.delete_run(dropped)

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        view = trials_view(self.run.space.searched, maximize=self._maximize())
        found = self.client.get_experiment_by_name(self.name)
        if found is None:
            try:
                tags = {keys.STUDY_TAG: self.name, VIEW_TAG: view}
                return self.client.create_experiment(self.name, tags=tags)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = self.client.get_experiment_by_name(self.name)  # a worker beat us to it
        if found.lifecycle_stage == "deleted":
            # Deleted in the UI: its name stays taken, so the study's runs can only go back in.
            self.client.restore_experiment(found.experiment_id)
        if found.tags.get(VIEW_TAG) != view:  # an experiment from an hpo without the view
            self.client.set_experiment_tag(found.experiment_id, VIEW_TAG, view)
        return found.experiment_id

    def _maximize(self) -> bool:
        return self.run.study.direction.name == "MAXIMIZE"

    def _stored(self) -> str | None:
        run_id = self.run.study.user_attrs.get(keys.STUDY_RUN_ATTR)
        return run_id if run_id and self._usable(run_id) else None

    def _usable(self, run_id: str) -> bool:
        """Whether ``run_id`` is a live run of this experiment in this store."""
        from mlflow.exceptions import MlflowException

        try:
            info = self.client.get_run(run_id).info
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False  # another tracking store than last time
            raise
        return info.lifecycle_stage == "active" and info.experiment_id == self.experiment_id

    def _find_or_create(self) -> str:
        found = self._study_runs()
        if found:
            return found[0]
        mine = self._create()
        # Workers starting together may each create one; all of them keep the oldest.
        chosen = (self._study_runs() or [mine])[0]
        if chosen != mine:
            self.client.delete_run(mine)
        return chosen

    def _study_runs(self) -> list[str]:
        from mlflow.entities import ViewType

        query = (
            f"tags.`{keys.STUDY_KEY_TAG}` = '{self.study_key()}' "
            f"and tags.`{keys.KIND_TAG}` = '{keys.KIND_STUDY}'"
        )
        runs = self.client.search_runs(
            [self.experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY
        )
        ordered = sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))
        return [r.info.run_id for r in ordered]

    def study_key(self) -> str:
        """The same for every worker of this study, different for another of the same name."""
        attrs = self.run.study.user_attrs
        parts = [
            self.name,
            str(attrs.get(keys.FINGERPRINT_ATTR)),
            str(attrs.get(keys.CONTENT_ID_ATTR)),
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def _create(self) -> str:
        from mlflow.entities import Param

        from trainer.summary import summarize

        tags = {**self.tags, **content.study_run_tags(self.run, self.study_key())}
        created = self.client.create_run(self.experiment_id, tags=tags, run_name=self.name)
        run_id = created.info.run_id
        self.created.add(run_id)
        params = [Param(k, v) for k, v in content.study_params(self.run).items()]
        self.client.log_batch(run_id, params=params)
        summary = summarize(self.run.table)
        name = keys.DATA_SUMMARY_ARTIFACT
        self.client.log_dict(run_id, summary.to_dict(), f"{name}.json")
        self.client.log_text(run_id, summary.to_text() + "\n", f"{name}.txt")
        space_source = self.run.study.user_attrs.get(keys.SPACE_SOURCE_ATTR, "")
        self.client.log_text(run_id, space_source, keys.SPACE_ARTIFACT)
        return run_id

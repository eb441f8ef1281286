"""MLflow records of a study: one experiment, a parent run for the study, a child run per trial.

Everything is written from the driver through ``MlflowClient`` (trials never talk to MLflow):
one writer per store, no per-trial MLflow import, status kept in step with Ray's view of each
trial, and a trial retried after a lost worker keeps logging into its own run, found again by its
``ray.trial_id`` tag. Metrics go in one ``log_batch`` call per epoch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from certstudy.safe_yaml import load_file
from certstudy.study.records.mlflow_seed import seed as seed_store
from certstudy.study.records.names import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_TAGS,
    PARENT_TAG,
    REASON_TAG,
    ROLE_TAG,
    STATUS_TAG,
    STUDY_ARTIFACT,
    STUDY_TAG,
    TRIAL_ID_TAG,
    TRIAL_STUDY_ARTIFACT,
    State,
)

_MAX_BATCH = 100  # MLflow accepts at most 100 params (and 1000 metrics) per log_batch


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {'a.b.c': 'value'} with every leaf, so each run records the full config."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


class Tracker:
    """Thin, typed wrapper around ``MlflowClient`` for certstudy's run layout."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        seed_store(tracking_uri)  # a new sqlite store without MLflow's migrations (``study/records/mlflow_seed.py``)
        self.client = MlflowClient(tracking_uri)

    # experiments and the study run ----------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.tags.get("certstudy") and exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        location = (self.artifact_root / name).as_uri() if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)

    def mark_study_experiments(self) -> list[tuple[str, str]]:
        """Sets the experiment-kind tag on every certstudy experiment of the store (created before the
        tag, or re-kinded by the UI's inference); returns their (name, id), the newest first."""
        found = self.client.search_experiments(filter_string="tags.certstudy = '1'", order_by=["last_update_time DESC"])
        for exp in found:
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return [(exp.name, exp.experiment_id) for exp in found]

    def start_study(
        self,
        experiment_id: str,
        study: str,
        params: Mapping[str, Any],
        study_yaml: str,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=study,
            tags={ROLE_TAG: "study", STUDY_TAG: study, STATUS_TAG: State.RUNNING, **(tags or {})},
        )
        self._log_params(run.info.run_id, flatten(params))
        self.client.log_text(run.info.run_id, study_yaml, STUDY_ARTIFACT)
        return run.info.run_id

    def drop_tag(self, run_id: str, key: str) -> None:
        """Removes a tag if the run has it."""
        if key in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, key)

    def end_run(self, run_id: str, status: str, tags: Mapping[str, str] | None = None) -> None:
        """status: FINISHED, FAILED or KILLED (MLflow's terminal states)."""
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status)

    def latest_study_run(self, experiment_id: str, study: str) -> Run | None:
        runs = self.client.search_runs(
            [experiment_id],
            f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{study}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    # trial runs ------------------------------------------------------------------------------

    def find_trial_run(self, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [experiment_id],
            f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def start_trial(
        self,
        experiment_id: str,
        parent_run_id: str,
        trial_id: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        trial_yaml: str,
    ) -> str:
        """The trial's child run: created once, found again (and reopened) on a retry or resume."""
        existing = self.find_trial_run(experiment_id, parent_run_id, trial_id)
        if existing is not None:
            self.client.update_run(existing, status="RUNNING")
            return existing
        run = self.client.create_run(
            experiment_id,
            run_name=run_name,
            tags={
                ROLE_TAG: "trial",
                PARENT_TAG: parent_run_id,
                TRIAL_ID_TAG: trial_id,
                STATUS_TAG: State.RUNNING,
                **tags,
            },
        )
        run_id = run.info.run_id
        self._log_params(run_id, flatten(params))
        self.client.log_text(run_id, trial_yaml, TRIAL_STUDY_ARTIFACT)
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        self.log_metric_steps(run_id, [(metrics, step, int(time.time() * 1000))])

    def log_metric_steps(self, run_id: str, steps: Iterable[tuple[Mapping[str, float], int, int]]) -> None:
        """Several epochs' metrics, each (metrics, step, timestamp in ms), in as few ``log_batch`` calls
        as MLflow allows."""
        batch = [Metric(k, float(v), ts, step) for metrics, step, ts in steps for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[i : i + 1000])

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifact_dir(self, run_id: str, directory: Path) -> None:
        """Every file under ``directory``, at the same relative paths in the run's artifacts."""
        if directory.is_dir():
            self.client.log_artifacts(run_id, str(directory))

    def trial_study(self, run_id: str) -> dict[str, Any]:
        """The trial's resolved study file (artifact ``trial_study.yaml``) as plain data."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run_id, TRIAL_STUDY_ARTIFACT, tmp)
            docs = load_file(local, "trial study artifact")
            return docs[0] if docs else {}

    def close_lost_runs(self, experiment_id: str, study: str, reason: str) -> int:
        """Ends KILLED every study run of ``study`` still RUNNING, and its RUNNING trial runs: a driver
        killed before it could close them left them so (the caller holds the study's lock, so no
        live driver owns them). Returns how many runs it closed."""
        stale = self.client.search_runs(
            [experiment_id],
            f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{study}' and attributes.status = 'RUNNING'",
        )
        closed = 0
        for parent in stale:
            for run in self.child_runs(experiment_id, parent.info.run_id):
                if run.info.status in ("RUNNING", "SCHEDULED"):
                    self.end_run(run.info.run_id, "KILLED", {STATUS_TAG: State.KILLED, REASON_TAG: reason})
                    closed += 1
            self.end_run(parent.info.run_id, "KILLED", {STATUS_TAG: State.KILLED, REASON_TAG: reason})
            closed += 1
        return closed

    def child_runs(self, experiment_id: str, parent_run_id: str) -> list[Run]:
        return self.client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=50000)

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _MAX_BATCH):
            self.client.log_batch(run_id, params=items[i : i + _MAX_BATCH])

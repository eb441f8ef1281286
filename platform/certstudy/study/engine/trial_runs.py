"""The MLflow child runs of a study's trials: created with their tags and resolved study file,
metrics buffered per run and written in batches, tags, retries and the run's end (with the trained
model). Every method runs on the MLflow writer's thread (``study/engine/mlflow_writer.py``); a
write that fails leaves its metrics buffered for the retry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from certstudy.study.records.names import (
    DATASET_TAG,
    METHOD_LABEL_TAG,
    METHOD_TAG,
    MODEL_ARTIFACT_DIR,
    MODEL_TAG,
    OPTUNA_TAG,
    OPTUNA_TRIAL_KEY,
    REASON_TAG,
    RETRIES_TAG,
    STUDY_TAG,
)
from certstudy.study.records.tracking import Tracker
from certstudy.study.spec.loading import dump_study
from certstudy.study.spec.schema import StudySpec
from certstudy.study.spec.space import resolve
from certstudy.trial.checkpoint import ARTIFACTS_DIR, MODEL_FILE


class TrialRuns:
    """Ray trial id -> its MLflow run, and the writes to it."""

    def __init__(
        self,
        tracker: Tracker,
        spec: StudySpec,
        experiment_id: str,
        parent_run_id: str,
        runs: dict[str, str] | None = None,
    ) -> None:
        self.tracker, self.spec = tracker, spec
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.runs: dict[str, str] = {} if runs is None else runs  # trial id -> MLflow run id
        self.pending: dict[str, tuple[dict[str, Any], list[tuple[dict[str, float], int, int]]]] = {}

    def buffered(self) -> int:
        return sum(len(epochs) for _, epochs in self.pending.values())

    def run_id(self, trial_id: str, config: dict[str, Any]) -> str:
        if trial_id not in self.runs:
            resolved = resolve(self.spec, config)
            cfg = resolved.trial_config()
            entry = resolved.method_entries[0]
            number = config.get(OPTUNA_TRIAL_KEY)
            tags = {
                STUDY_TAG: self.spec.name,
                METHOD_TAG: cfg.method.name,
                METHOD_LABEL_TAG: entry.key,
                DATASET_TAG: cfg.dataset.name,
                MODEL_TAG: cfg.model.name,
                OPTUNA_TAG: str(number),
            }
            name = (
                f"{self.spec.name}-{number:04d}-{entry.key}" if number is not None else f"{self.spec.name}-{trial_id}"
            )
            self.runs[trial_id] = self.tracker.start_trial(
                self.experiment_id,
                self.parent_run_id,
                trial_id,
                name,
                cfg.model_dump(mode="json"),
                tags,
                yaml.safe_dump(dump_study(resolved), sort_keys=False),
            )
        return self.runs[trial_id]

    def buffer_metrics(self, trial_id: str, config: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """The timestamp is fixed here, so a write retried after an outage repeats identical rows
        (which MLflow keeps once) instead of adding new ones."""
        self.pending.setdefault(trial_id, (config, []))[1].append((metrics, step, int(time.time() * 1000)))

    def write_pending(self) -> None:
        while self.pending:
            trial_id, (config, epochs) = next(iter(self.pending.items()))
            self.tracker.log_metric_steps(self.run_id(trial_id, config), epochs)  # kept buffered if this fails
            del self.pending[trial_id]

    def write_end(
        self, trial_id: str, config: dict[str, Any], status: str, tags: dict[str, str], model_dir: str | None
    ) -> None:
        run_id = self.run_id(trial_id, config)
        if model_dir is not None:
            self.tracker.log_artifacts(run_id, [Path(model_dir) / MODEL_FILE], MODEL_ARTIFACT_DIR)
            self.tracker.log_artifact_dir(run_id, Path(model_dir) / ARTIFACTS_DIR)
        if status == "FINISHED" and REASON_TAG not in tags:
            self.tracker.drop_tag(run_id, REASON_TAG)  # left by an interrupted session that closed the run KILLED
        self.tracker.end_run(run_id, status, tags)

    def write_tags(self, trial_id: str, config: dict[str, Any], tags: dict[str, str]) -> None:
        run_id = self.run_id(trial_id, config)
        for key, value in tags.items():
            self.tracker.client.set_tag(run_id, key, value)

    def write_retry(self, trial_id: str, config: dict[str, Any], retries: int) -> None:
        self.tracker.client.set_tag(self.run_id(trial_id, config), RETRIES_TAG, str(retries))

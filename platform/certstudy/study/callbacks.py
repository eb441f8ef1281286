"""Driver-side Ray Tune callbacks: MLflow child runs per trial, and live progress."""

from __future__ import annotations

from typing import Any

import yaml
from ray.tune import Callback

from certstudy.study.optuna_bridge import trial_error_reason
from certstudy.study.progress import Progress
from certstudy.study.results import OPTUNA_TRIAL_KEY, failure_reason, numeric_metrics
from certstudy.study.space import resolve
from certstudy.study.spec import StudySpec, dump_study
from certstudy.study.tracking import MODEL_ARTIFACT_DIR, OPTUNA_TAG, REASON_TAG, STATUS_TAG, STUDY_TAG, Tracker
from certstudy.trial.checkpoint import MODEL_FILE


def trial_label(trial: Any) -> str:
    number = trial.config.get(OPTUNA_TRIAL_KEY)
    return f"trial {number}" if number is not None else trial.trial_id


class MlflowTrialCallback(Callback):
    """One nested MLflow run per Ray trial, ended with the trial's real outcome."""

    def __init__(self, tracking_uri: str, artifact_root: str | None, experiment_id: str, parent_run_id: str, spec: dict[str, Any]) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.spec = spec
        self._runs: dict[str, str] = {}
        self._ended: set[str] = set()
        self._tracker: Tracker | None = None
        self._study: StudySpec | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tracker"] = None  # holds DB connections; rebuilt after unpickling
        state["_study"] = None
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            from pathlib import Path

            self._tracker = Tracker(self.tracking_uri, Path(self.artifact_root) if self.artifact_root else None)
        return self._tracker

    @property
    def study(self) -> StudySpec:
        if self._study is None:
            self._study = StudySpec.model_validate(self.spec)
        return self._study

    def _run_id(self, trial: Any) -> str:
        if trial.trial_id not in self._runs:
            resolved = resolve(self.study, trial.config)
            cfg = resolved.trial_config()
            entry = resolved.method_entries[0]
            number = trial.config.get(OPTUNA_TRIAL_KEY)
            tags = {
                STUDY_TAG: self.study.name,
                "certstudy.method": cfg.method.name,
                "certstudy.method_label": entry.key,
                "certstudy.dataset": cfg.dataset.name,
                "certstudy.model": cfg.model.name,
                OPTUNA_TAG: str(number),
            }
            name = f"{self.study.name}-{number:04d}-{entry.key}" if number is not None else f"{self.study.name}-{trial.trial_id}"
            self._runs[trial.trial_id] = self.tracker.start_trial(
                self.experiment_id, self.parent_run_id, trial.trial_id, name, cfg.model_dump(mode="json"), tags, yaml.safe_dump(dump_study(resolved), sort_keys=False)
            )
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.discard(trial.trial_id)
        self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if failure_reason(result) is not None:
            return
        self.tracker.log_metrics(self._run_id(trial), numeric_metrics(result), step=int(result.get("epoch", result.get("training_iteration", 0))))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        reason = failure_reason(trial.last_result)
        if reason is not None:
            self._end(trial, "FAILED", {STATUS_TAG: "failed", REASON_TAG: reason})
            return
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as d:
                from pathlib import Path

                model = Path(d) / MODEL_FILE
                if model.exists():
                    self.tracker.log_artifacts(run_id, [model], MODEL_ARTIFACT_DIR)
        self._end(trial, "FINISHED", {STATUS_TAG: "completed"})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED", {STATUS_TAG: "failed", REASON_TAG: trial_error_reason(trial)})

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        self.tracker.client.set_tag(run_id, "certstudy.retries", str(trial.run_metadata.num_failures))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:
            if trial.trial_id in self._runs and trial.trial_id not in self._ended:
                self._end(trial, "KILLED", {STATUS_TAG: "killed", REASON_TAG: f"study ended while the trial was {trial.status}"})

    def _end(self, trial: Any, status: str, tags: dict[str, str]) -> None:
        self.tracker.end_run(self._run_id(trial), status, tags)
        self._ended.add(trial.trial_id)


class ProgressCallback(Callback):
    """Feeds trial events to the live progress display."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __getstate__(self) -> dict[str, Any]:
        return {"progress": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress:
            self.progress.started(trial.trial_id, trial_label(trial), resolve_key(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.progress and failure_reason(result) is None:
            self.progress.result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress:
            reason = failure_reason(trial.last_result)
            if reason is None:
                self.progress.completed(trial.trial_id, trial.last_result)
            else:
                self.progress.failed(trial.trial_id, reason)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress:
            self.progress.failed(trial.trial_id, trial_error_reason(trial))


def resolve_key(trial: Any) -> str:
    return str(trial.config.get("method", ""))

"""Driver-side Ray Tune callbacks: MLflow child runs per trial, and live progress (the state digests
are ``digest_callback``'s)."""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ray.tune import Callback

from certstudy.study.engine.disk_full_stop import stopping
from certstudy.study.engine.mlflow_writer import MlflowWriter, TrackingUnreachable
from certstudy.study.engine.optuna_bridge import StudySearcher, trial_error_reason
from certstudy.study.engine.progress import Progress
from certstudy.study.engine.ray_compat import trial_failures
from certstudy.study.engine.resume_backfill import backfill, unclosed
from certstudy.study.engine.trial_runs import TrialRuns
from certstudy.study.records.names import (
    BEST_EPOCH_KEY,
    OPTUNA_TRIAL_KEY,
    REASON_TAG,
    STATUS_TAG,
    State,
    failure_reason,
    result_epoch,
    result_tags,
    series_metrics,
)
from certstudy.study.records.tracking import Tracker
from certstudy.study.spec.schema import StudySpec
from certstudy.trial.checkpoint import ARTIFACTS_DIR, MODEL_FILE

logger = logging.getLogger(__name__)
_restoring: dict[str, list[Callback]] = {}  # studies being restored -> the callbacks unpickled so far


@contextlib.contextmanager
def restoring(study: str) -> Iterator[list[Callback]]:
    """Collects the callbacks of ``study`` that are unpickled inside the block (``Tuner.restore``
    loads them from its state): a resume reaches them, and the restored searcher they hold, without
    Ray's private attributes."""
    found = _restoring.setdefault(study, [])
    try:
        yield found
    finally:
        _restoring.pop(study, None)


def _unpickled(study: str, callback: Callback) -> None:
    if study in _restoring:
        _restoring[study].append(callback)


F = TypeVar("F", bound=Callable[..., Any])


def timed(method: F) -> F:
    """Adds the hook's run time to ``self.seconds`` (the driver's cost of tracking)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    return wrapper  # type: ignore[return-value]


def trial_label(trial: Any) -> str:
    number = trial.config.get(OPTUNA_TRIAL_KEY)
    return f"trial {number}" if number is not None else trial.trial_id


class MlflowTrialCallback(Callback):
    """One nested MLflow run per Ray trial, ended with the trial's real outcome.

    The hooks run on the driver's thread and only enqueue: ``MlflowWriter`` makes the calls on its
    own thread (batching metrics, riding out an outage), ``TrialRuns`` is what they write, and on
    resume ``resume_backfill`` fills in what the interrupted driver had not written.
    """

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: str | None,
        experiment_id: str,
        parent_run_id: str,
        spec: dict[str, Any],
        searcher: StudySearcher | None = None,
    ) -> None:
        self.searcher = searcher  # the source of prune decisions (restored with it by Tuner.restore)
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.spec = spec
        self.seconds = 0.0
        self.run_ids: dict[str, str] = {}  # trial id -> MLflow run id, as far as this driver knows
        self._started: set[str] = set()
        self._ended: set[str] = set()
        self._logged: dict[str, int] = {}  # last per-epoch step sent to MLflow, per trial
        self._settle = False  # set by ``backfill``: close restored trials' runs at the first step
        self._runs: TrialRuns | None = None
        self._writer: MlflowWriter | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": None, "_writer": None}  # connections and threads are rebuilt

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _unpickled(self.study_name, self)

    @property
    def study_name(self) -> str:
        return str(self.spec.get("name"))

    @property
    def runs(self) -> TrialRuns:
        if self._runs is None:
            tracker = Tracker(self.tracking_uri, Path(self.artifact_root) if self.artifact_root else None)
            study = StudySpec.model_validate(self.spec)
            # run_ids is shared: the writer's thread adds to it, the pickled state keeps it
            self._runs = TrialRuns(tracker, study, self.experiment_id, self.parent_run_id, self.run_ids)
        return self._runs

    @property
    def writer(self) -> MlflowWriter:
        if self._writer is None:
            runs = self.runs
            self._writer = MlflowWriter(
                runs.spec.name,
                self.tracking_uri,
                runs.spec.tracking.unreachable_wait_s,
                periodic=runs.write_pending,
                buffering=runs.buffer_metrics,
                backlog=runs.buffered,
            )
        return self._writer

    @property
    def fatal(self) -> str | None:
        """Why the study stops (the tracking store stayed unreachable too long), or None."""
        return self._writer.fatal if self._writer is not None else None

    def flush(self) -> None:
        """Waits until every queued MLflow write is done, buffered metrics included."""
        if self._writer is not None:
            self._writer.flush()

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.writer.submit(fn, *args)

    # resume --------------------------------------------------------------------------------

    def backfill(self, experiment_folder: str) -> int:
        """On resume, before any trial runs again: ``resume_backfill.backfill``. Trials that had
        ended without their run being closed are closed when Ray Tune hands over its restored
        trials (``on_step_begin``). Returns how many epochs were back-filled."""
        self._settle = True
        filled, last = backfill(self.runs, experiment_folder)
        self._logged.update(last)
        return filled

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._settle_restored(iteration, trials)

    def _settle_restored(self, iteration: int, trials: list) -> None:
        """First step after a resume (or its end, when every trial had ended): a trial that ended in
        Ray Tune before the driver was lost, but whose MLflow run was never closed, gets its last
        report and its end recorded now, as ``on_trial_complete`` / ``on_trial_error`` would have."""
        if not self._settle:
            return
        self._settle = False
        for trial, last_report in unclosed(self.runs, trials, self._ended):
            if last_report:
                self.on_trial_result(iteration, trials, trial, trial.last_result)
            (self.on_trial_error if trial.status == "ERROR" else self.on_trial_complete)(iteration, trials, trial)

    # Ray hooks (driver thread): enqueue only -------------------------------------------------

    @timed
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.add(trial.trial_id)
        self._ended.discard(trial.trial_id)
        self._submit(self.runs.run_id, trial.trial_id, dict(trial.config))

    def _stop_if_unreachable(self) -> None:
        if self.fatal is not None:
            raise TrackingUnreachable(self.fatal)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._stop_if_unreachable()

    @timed
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._stop_if_unreachable()
        if failure_reason(result) is not None:
            return
        epoch = result_epoch(result)
        if BEST_EPOCH_KEY not in result:  # a per-epoch report (a best-epoch summary repeats the last epoch's step)
            if epoch <= self._logged.get(trial.trial_id, -1):
                return  # re-run after a retry from an earlier checkpoint: that epoch is already in MLflow
            self._logged[trial.trial_id] = epoch
        self._submit(self.runs.buffer_metrics, trial.trial_id, dict(trial.config), series_metrics(result), epoch)
        tags = result_tags(result)
        if tags:
            self._submit(self.runs.write_tags, trial.trial_id, dict(trial.config), tags)

    @timed
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = failure_reason(trial.last_result)
        if reason is not None:
            self._end(trial, "FAILED", {STATUS_TAG: State.FAILED, REASON_TAG: reason})
            return
        model_dir = None
        checkpoint = trial.checkpoint
        if checkpoint is not None:
            with checkpoint.as_directory() as d:  # local storage: the path itself; remote: a copy
                if (Path(d) / MODEL_FILE).exists():
                    model_dir = tempfile.mkdtemp(prefix="certstudy-model-")
                    shutil.copy(Path(d) / MODEL_FILE, model_dir)
                    if (Path(d) / ARTIFACTS_DIR).is_dir():
                        shutil.copytree(Path(d) / ARTIFACTS_DIR, Path(model_dir) / ARTIFACTS_DIR)
        decision = self.searcher.prune_decision(trial.trial_id) if self.searcher is not None else None
        self._end(trial, "FINISHED", decision.tags() if decision else {STATUS_TAG: State.COMPLETED}, model_dir)

    @timed
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if stopping(self.study_name):  # a full disk stopped it: interrupted, to be resumed
            self._end(trial, "KILLED", {STATUS_TAG: State.KILLED, REASON_TAG: "the study stopped: disk full"})
            return
        self._end(trial, "FAILED", {STATUS_TAG: State.FAILED, REASON_TAG: trial_error_reason(trial)})

    @timed
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(self.runs.write_retry, trial.trial_id, dict(trial.config), trial_failures(trial))

    @timed
    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._settle_restored(-1, trials)
        for trial in trials:
            if trial.trial_id in self._started and trial.trial_id not in self._ended:
                self._end(
                    trial,
                    "KILLED",
                    {STATUS_TAG: State.KILLED, REASON_TAG: f"study ended while the trial was {trial.status}"},
                )
        self.flush()

    def _end(self, trial: Any, status: str, tags: dict[str, str], model_dir: str | None = None) -> None:
        self._ended.add(trial.trial_id)
        self._submit(self.runs.write_end, trial.trial_id, dict(trial.config), status, tags, model_dir)
        if model_dir is not None:
            self._submit(shutil.rmtree, model_dir, True)


class ProgressCallback(Callback):
    """Feeds trial events to the live progress display (re-attached after a restore)."""

    def __init__(self, progress: Progress | None, searcher: StudySearcher | None = None, study: str = "") -> None:
        self.progress = progress
        self.searcher = searcher
        self.study_name = study

    def __getstate__(self) -> dict[str, Any]:
        return {"progress": None, "searcher": self.searcher, "study_name": self.study_name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _unpickled(self.study_name, self)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress:
            self.progress.started(trial.trial_id, trial_label(trial), resolve_key(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.progress and failure_reason(result) is None:
            self.progress.result(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress:
            reason = failure_reason(trial.last_result)
            decision = self.searcher.prune_decision(trial.trial_id) if self.searcher is not None else None
            if reason is None:
                self.progress.completed(trial.trial_id, trial.last_result, decision)
            else:
                self.progress.failed(trial.trial_id, reason)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress and not stopping(self.study_name):  # stopped by a full disk: not a failure
            self.progress.failed(trial.trial_id, trial_error_reason(trial))


def resolve_key(trial: Any) -> str:
    return str(trial.config.get("method", ""))

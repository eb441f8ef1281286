"""Driver-side Ray Tune callbacks: MLflow child runs per trial, and live progress."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from ray.tune import Callback

from certstudy.errors import CertstudyError, collapse
from certstudy.study.engine.disk_full_stop import request_stop, stopping
from certstudy.study.engine.optuna_bridge import StudySearcher, trial_error_reason
from certstudy.study.engine.progress import Progress
from certstudy.study.engine.ray_compat import trial_failures
from certstudy.study.records.names import (
    BEST_EPOCH_KEY,
    DATASET_TAG,
    METHOD_LABEL_TAG,
    METHOD_TAG,
    MODEL_ARTIFACT_DIR,
    MODEL_TAG,
    OPTUNA_TAG,
    OPTUNA_TRIAL_KEY,
    REASON_TAG,
    RETRIES_TAG,
    SERIES_PROBE,
    STATUS_TAG,
    STUDY_TAG,
    TRIAL_ID_TAG,
    State,
    failure_reason,
    result_epoch,
    result_tags,
    series_metrics,
)
from certstudy.study.records.state_digests import record as record_digests
from certstudy.study.records.state_digests import state_files
from certstudy.study.records.tracking import Tracker
from certstudy.study.spec.loading import dump_study
from certstudy.study.spec.schema import StudySpec
from certstudy.study.spec.space import resolve
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


class TrackingUnreachable(CertstudyError):
    """The tracking store stayed unreachable longer than the study allows; the study stops."""


TRANSIENT = ("connection", "max retries exceeded", "timed out", "timeout", "database is locked", "503", "502", "504")


def transient(exc: BaseException) -> bool:
    """An error a later retry may not meet: the store unreachable, overloaded or locked."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError)) or any(t in str(seen).lower() for t in TRANSIENT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _read_results(path: Path) -> list[dict[str, Any]]:
    """The reports in a trial's ``result.json`` (one JSON object per line); a line cut short by a kill
    ends the list."""
    import json

    reports = []
    with open(path) as fh:
        for line in fh:
            try:
                reports.append(json.loads(line))
            except ValueError:
                break
    return reports


class MlflowTrialCallback(Callback):
    """One nested MLflow run per Ray trial, ended with the trial's real outcome.

    Ray's function trainables wait, at every ``tune.report``, until the driver has processed the
    previous result, and on a small machine the driver's CPU time is taken from the trials. The
    hooks therefore only enqueue; one writer thread does the MLflow calls in order and batches
    metrics: a run's epochs are written together at most every ``FLUSH_SECONDS`` (and always
    before the run ends). ``flush()`` waits until everything queued is written.
    """

    FLUSH_SECONDS = 2.0
    RETRY_SECONDS = 2.0
    WARN_SECONDS = 30.0

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
        self._runs: dict[str, str] = {}  # trial id -> MLflow run id (writer thread only)
        self._started: set[str] = set()  # driver thread only, like _ended
        self._ended: set[str] = set()
        self._logged: dict[str, int] = {}  # driver thread only: last per-epoch step sent to MLflow, per trial
        self._tracker: Tracker | None = None
        self._study: StudySpec | None = None
        self._queue: queue.Queue | None = None
        self._writer: threading.Thread | None = None
        self._pending: dict[str, tuple[dict[str, Any], list[tuple[dict[str, float], int, int]]]] = {}  # writer only
        self._last_flush = 0.0
        self._down_since: float | None = None  # when the tracking store stopped answering (writer thread)
        self._warned = 0.0
        self.fatal: str | None = None  # set when the store stayed unreachable too long: the study stops
        self._settle = False  # set by ``backfill``: close restored trials' runs at the first step

    def get_state(self) -> None:
        """Ray Tune asks for this while it saves the experiment state: after writing the state files
        to its staging folder, before copying them to the experiment folder. Their digests are
        recorded then (``study/records/state_digests.py``). The callback has no state of its own to save
        (it is pickled whole in ``tuner.pkl``)."""
        staging = getattr(self.searcher, "staging_dir", None)  # absent in a searcher pickled before it existed
        if self.searcher is not None and staging:
            try:
                record_digests(self.searcher.study, Path(staging))
            except Exception as exc:
                if not request_stop(self.study.name, exc, "the Optuna storage"):
                    raise
                for path in state_files(Path(staging)):  # unrecorded: must not reach the experiment folder
                    path.unlink(missing_ok=True)
        return None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_tracker", "_study", "_queue", "_writer", "_down_since", "fatal"):
            state[key] = None  # connections and threads are rebuilt after unpickling
        state["_pending"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        defaults = (("_logged", {}), ("_last_flush", 0.0), ("_down_since", None), ("_warned", 0.0), ("_settle", False))
        for key, default in defaults:
            self.__dict__.setdefault(key, default)  # state pickled by a certstudy before the attribute existed
        self.fatal = None
        _unpickled(str(self.spec.get("name")), self)

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri, Path(self.artifact_root) if self.artifact_root else None)
        return self._tracker

    @property
    def study(self) -> StudySpec:
        if self._study is None:
            self._study = StudySpec.model_validate(self.spec)
        return self._study

    # the writer thread -----------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._queue is None:
            self._queue = queue.Queue()
            self._writer = threading.Thread(target=self._drain, name="certstudy-mlflow", daemon=True)
            self._writer.start()
        self._queue.put((fn, args))

    def _drain(self) -> None:
        assert self._queue is not None
        self._last_flush = time.monotonic()
        while True:
            try:
                fn, args = self._queue.get(timeout=self.FLUSH_SECONDS)
            except queue.Empty:
                fn, args = None, ()
            try:
                step, step_args = fn, args
                while True:  # an unreachable store is retried; anything else is a warning and skipped
                    try:
                        self._step(step, step_args)
                        self._reachable_again()
                        break
                    except Exception as exc:  # noqa: BLE001 - tracking must not take the study down
                        if request_stop(self.study.name, exc, "the MLflow tracking store"):
                            break  # disk full: the study stops, and resume back-fills from result.json
                        if not transient(exc):
                            logger.warning("MLflow write failed (%s): %s", getattr(fn, "__name__", fn), exc)
                            break
                        if not self._unreachable(exc):
                            break
                        if step == self._buffer_metrics:
                            step, step_args = None, ()  # buffered once: a retry only flushes (no twin rows)
                        time.sleep(self.RETRY_SECONDS)
            finally:
                if fn is not None:
                    self._queue.task_done()

    def _step(self, fn: Callable[..., Any] | None, args: tuple[Any, ...]) -> None:
        if self.fatal is not None and fn != self._buffer_metrics:
            return  # the study is stopping: nothing more reaches MLflow (resume back-fills the epochs)
        if fn is not None and fn != self._buffer_metrics:
            self._write_pending()  # keep MLflow calls in the order they were made
        if fn is not None:
            fn(*args)
        if time.monotonic() - self._last_flush >= self.FLUSH_SECONDS:
            self._write_pending()
            self._last_flush = time.monotonic()

    def _buffered(self) -> int:
        return (self._queue.qsize() if self._queue is not None else 0) + sum(
            len(epochs) for _, epochs in self._pending.values()
        )

    def _unreachable(self, exc: BaseException) -> bool:
        """An outage: warn (every ``WARN_SECONDS``) while results stay buffered; True to retry, False
        (and ``fatal`` set) once the study's ``tracking.unreachable_wait_s`` has passed."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since, self._warned = now, -math.inf
        wait = self.study.tracking.unreachable_wait_s
        left = wait - (now - self._down_since)
        if left <= 0:
            self.fatal = (
                f"tracking server {self.tracking_uri} unreachable for {wait:.0f} s ({self._buffered()} results not "
                f"recorded); the study stopped: certstudy resume {self.study.name} once it is back"
            )
            return False
        if now - self._warned >= self.WARN_SECONDS:
            self._warned = now
            sys.stderr.write(
                f"warning: tracking server unreachable ({self.tracking_uri}; {collapse(str(exc), 120)}), "
                f"{self._buffered()} results buffered, retrying (for {left:.0f} s more)\n"
            )
        return True

    def _reachable_again(self) -> None:
        if self._down_since is not None:
            sys.stderr.write(
                f"tracking server reachable again after {time.monotonic() - self._down_since:.0f} s; "
                f"delivering the buffered results\n"
            )
            self._down_since = None

    def flush(self) -> None:
        """Waits until every queued MLflow write is done, buffered metrics included."""
        if self._queue is not None:
            self._submit(self._write_pending)
            self._queue.join()

    # work done on the writer thread ----------------------------------------------------------

    def _run_id(self, trial_id: str, config: dict[str, Any]) -> str:
        if trial_id not in self._runs:
            resolved = resolve(self.study, config)
            cfg = resolved.trial_config()
            entry = resolved.method_entries[0]
            number = config.get(OPTUNA_TRIAL_KEY)
            tags = {
                STUDY_TAG: self.study.name,
                METHOD_TAG: cfg.method.name,
                METHOD_LABEL_TAG: entry.key,
                DATASET_TAG: cfg.dataset.name,
                MODEL_TAG: cfg.model.name,
                OPTUNA_TAG: str(number),
            }
            name = (
                f"{self.study.name}-{number:04d}-{entry.key}" if number is not None else f"{self.study.name}-{trial_id}"
            )
            self._runs[trial_id] = self.tracker.start_trial(
                self.experiment_id,
                self.parent_run_id,
                trial_id,
                name,
                cfg.model_dump(mode="json"),
                tags,
                yaml.safe_dump(dump_study(resolved), sort_keys=False),
            )
        return self._runs[trial_id]

    def _buffer_metrics(self, trial_id: str, config: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """The timestamp is fixed here, so a write retried after an outage repeats identical rows
        (which MLflow keeps once) instead of adding new ones."""
        self._pending.setdefault(trial_id, (config, []))[1].append((metrics, step, int(time.time() * 1000)))

    def _write_pending(self) -> None:
        while self._pending:
            trial_id, (config, epochs) = next(iter(self._pending.items()))
            self.tracker.log_metric_steps(self._run_id(trial_id, config), epochs)  # kept buffered if this fails
            del self._pending[trial_id]

    def _write_end(
        self, trial_id: str, config: dict[str, Any], status: str, tags: dict[str, str], model_dir: str | None
    ) -> None:
        run_id = self._run_id(trial_id, config)
        if model_dir is not None:
            self.tracker.log_artifacts(run_id, [Path(model_dir) / MODEL_FILE], MODEL_ARTIFACT_DIR)
            self.tracker.log_artifact_dir(run_id, Path(model_dir) / ARTIFACTS_DIR)
        if status == "FINISHED" and REASON_TAG not in tags:
            self.tracker.drop_tag(run_id, REASON_TAG)  # left by an interrupted session that closed the run KILLED
        self.tracker.end_run(run_id, status, tags)

    def _write_tags(self, trial_id: str, config: dict[str, Any], tags: dict[str, str]) -> None:
        run_id = self._run_id(trial_id, config)
        for key, value in tags.items():
            self.tracker.client.set_tag(run_id, key, value)

    def _write_retry(self, trial_id: str, config: dict[str, Any], retries: int) -> None:
        self.tracker.client.set_tag(self._run_id(trial_id, config), RETRIES_TAG, str(retries))

    # resume --------------------------------------------------------------------------------

    def backfill(self, experiment_folder: str) -> int:
        """On resume, before any trial runs again (driver thread, nothing queued yet): each trial's
        last epoch in MLflow is remembered, so an epoch re-run from an older checkpoint (or from the
        start, when the trial had none) is not logged twice; then the per-epoch results Ray wrote to
        a trial's ``result.json`` that MLflow lacks (they were in the write buffer when the driver
        was killed) are logged, and a trial whose run was never created gets it. Ray keeps
        ``result.json`` in its local staging folder and syncs it to the experiment folder now and
        then, so a trial may have none there: MLflow's own series is what dedups. Trials that had
        ended without their run being closed are closed when Ray Tune hands over its restored
        trials (``on_step_begin``). Returns how many epochs were back-filled."""
        self._settle = True
        logged: dict[str, set[int]] = {}
        for run in self.tracker.child_runs(self.experiment_id, self.parent_run_id):
            trial_id = run.data.tags.get(TRIAL_ID_TAG)
            if trial_id:
                self._runs[trial_id] = run.info.run_id
                logged[trial_id] = {
                    m.step for m in self.tracker.client.get_metric_history(run.info.run_id, SERIES_PROBE)
                }
        filled = 0
        if "://" not in experiment_folder:  # remote storage: the resumed trials re-report from their checkpoints
            for results_file in sorted(Path(experiment_folder).glob("*/result.json")):
                filled += self._fill_from(results_file, logged)
        for trial_id, steps in logged.items():
            self._logged[trial_id] = max(steps, default=-1)
        return filled

    def _fill_from(self, results_file: Path, logged: dict[str, set[int]]) -> int:
        """Logs the epochs of one ``result.json`` that MLflow lacks; adds them to ``logged``."""
        reports = _read_results(results_file)
        if not reports:
            return 0
        trial_id, config = str(reports[0]["trial_id"]), dict(reports[0].get("config", {}))
        run_id = self._runs.get(trial_id) or self._run_id(trial_id, config)
        steps = logged.setdefault(trial_id, set())
        missing = {}
        for result in reports:
            epoch = result_epoch(result)
            if BEST_EPOCH_KEY not in result and failure_reason(result) is None and epoch not in steps:
                missing[epoch] = series_metrics(result)
        if missing:
            now = int(time.time() * 1000)
            self.tracker.log_metric_steps(run_id, [(m, e, now) for e, m in sorted(missing.items())])
            steps.update(missing)
        return len(missing)

    # Ray hooks (driver thread): enqueue only -------------------------------------------------

    @timed
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.add(trial.trial_id)
        self._ended.discard(trial.trial_id)
        self._submit(self._run_id, trial.trial_id, dict(trial.config))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._settle_restored(iteration, trials)

    def _settle_restored(self, iteration: int, trials: list) -> None:
        """First step after a resume (or its end, when every trial had ended): a trial that ended in
        Ray Tune before the driver was lost, but whose MLflow run was never closed (its end was
        still buffered), gets its last report and its end recorded now, as ``on_trial_complete`` /
        ``on_trial_error`` would have."""
        if not self._settle:
            return
        self._settle = False
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR") or trial.trial_id in self._ended:
                continue
            run_id = self._runs.get(trial.trial_id) or self.tracker.find_trial_run(
                self.experiment_id, self.parent_run_id, trial.trial_id
            )
            run = self.tracker.client.get_run(run_id) if run_id else None
            if run is not None and run.info.status in ("FINISHED", "FAILED"):
                continue
            if trial.last_result and BEST_EPOCH_KEY not in (run.data.metrics if run else {}):
                self.on_trial_result(iteration, trials, trial, trial.last_result)
            (self.on_trial_error if trial.status == "ERROR" else self.on_trial_complete)(iteration, trials, trial)

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
        self._submit(self._buffer_metrics, trial.trial_id, dict(trial.config), series_metrics(result), epoch)
        tags = result_tags(result)
        if tags:
            self._submit(self._write_tags, trial.trial_id, dict(trial.config), tags)

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
        if stopping(self.study.name):  # a full disk stopped it: interrupted, to be resumed
            self._end(trial, "KILLED", {STATUS_TAG: State.KILLED, REASON_TAG: "the study stopped: disk full"})
            return
        self._end(trial, "FAILED", {STATUS_TAG: State.FAILED, REASON_TAG: trial_error_reason(trial)})

    @timed
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(self._write_retry, trial.trial_id, dict(trial.config), trial_failures(trial))

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
        self._submit(self._write_end, trial.trial_id, dict(trial.config), status, tags, model_dir)
        if model_dir is not None:
            self._submit(shutil.rmtree, model_dir, True)


class ProgressCallback(Callback):
    """Feeds trial events to the live progress display (re-attached after a restore)."""

    def __init__(self, progress: Progress | None, searcher: StudySearcher | None = None, study: str = "") -> None:
        self.progress = progress
        self.searcher = searcher
        self.study = study

    def __getstate__(self) -> dict[str, Any]:
        return {"progress": None, "searcher": self.searcher, "study": self.study}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _unpickled(self.study, self)

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
        if self.progress and not stopping(self.study):  # stopped by a full disk: not a failure
            self.progress.failed(trial.trial_id, trial_error_reason(trial))


def resolve_key(trial: Any) -> str:
    return str(trial.config.get("method", ""))

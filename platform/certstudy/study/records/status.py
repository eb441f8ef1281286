"""``certstudy status``: where a study stands, from its stored state alone (Ray is not started).

The Optuna storage says what each trial proposed and how it ended (COMPLETE, PRUNED, FAIL, or
still RUNNING); the MLflow child runs add the epochs reached, the run's own status and why a run
failed or was pruned; the Ray Tune folder says whether an interrupted study can be resumed.

The study as launched (``<study>/study.yaml``, complete with its defaults) gives the name, the
objective and the planned trial count, read as plain YAML: validating it again would import the
schema's registries (torch). Sqlite stores are read with ``stored_sqlite`` (no Optuna, no MLflow
import); other stores through the libraries. Both give the same rows (``tests/test_fast_reads.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from certstudy.errors import CertstudyError
from certstudy.study.records.launched import LaunchedStudy
from certstudy.study.records.lock import running_holder
from certstudy.study.records.names import (
    ENDED,
    FAIL_REASON_ATTR,
    FINISHED,
    PARENT_ATTR,
    PRUNE_REASON_TAG,
    PRUNED_AT_TAG,
    RAY_EXPERIMENT_ATTR,
    REASON_TAG,
    SERIES_PROBE,
    STATUS_TAG,
    TRACKING_ATTR,
    State,
    summary_metrics,
)
from certstudy.study.records.stored_sqlite import (
    StoredRun,
    TrialRecord,
    can_resume,
    existing_store,
    mlflow_runs,
    optuna_study,
)
from certstudy.study.spec.store_urls import sqlite_path
from certstudy.workdir import TRACKING_STORE, Workdir

STATES = {
    "COMPLETE": State.COMPLETED,
    "PRUNED": State.PRUNED,
    "FAIL": State.FAILED,
    "RUNNING": State.RUNNING,
    "WAITING": State.WAITING,
}


def state_name(state: Any) -> str:
    """An Optuna trial state (or its name) in certstudy's words (those of progress, MLflow tags and counts)."""
    name = state if isinstance(state, str) else state.name
    return STATES.get(name, name.lower())


@dataclass
class TrialRow:
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    epochs: int | None = None
    run_status: str = "-"
    note: str = ""
    phase: str = "-"  # a running trial's phase, from the driver's progress file


@dataclass
class StudyStatus:
    launched: LaunchedStudy
    rows: list[TrialRow]
    parent_status: str
    resumable: bool
    counts: dict[str, int] = field(default_factory=dict)
    running: str | None = None  # the live process that runs the study, as its lock names it

    @property
    def best(self) -> TrialRow | None:
        obj = self.launched.objective
        done = [r for r in self.rows if r.state in FINISHED and r.value is not None and math.isfinite(r.value)]
        if not done:
            return None
        return (max if obj.mode == "max" else min)(done, key=lambda r: r.value)  # type: ignore[arg-type, return-value]


@dataclass
class StoredRecords:
    """A study's stored records in the terms status uses, however they were read."""

    trials: list[TrialRecord]
    parent: StoredRun | None
    runs: dict[int, StoredRun]
    ray_experiment: str


def read_records(workdir: Workdir, study: LaunchedStudy) -> StoredRecords:
    """Straight from sqlite when both stores are sqlite files; through Optuna and MLflow otherwise."""
    optuna_file = sqlite_path(workdir.optuna_url(study.name))
    if optuna_file is not None:
        existing_store(workdir.optuna_url(study.name), "Optuna storage")
        found = optuna_study(optuna_file, study.name)
        if found is None:
            raise CertstudyError(
                f"study {study.name!r} has no Optuna study in {optuna_file} (it never got past set-up, or was deleted)"
            )
        attrs, trials = found
        uri = attrs.get(TRACKING_ATTR) or workdir.recorded_store(study.name, TRACKING_STORE) or workdir.tracking_uri
        mlflow_file = sqlite_path(uri)
        if mlflow_file is not None:
            existing_store(uri, "MLflow tracking store")
            parent_id = attrs.get(PARENT_ATTR)
            parent, runs = mlflow_runs(mlflow_file, parent_id) if parent_id else (None, {})
            ray_experiment = attrs.get(RAY_EXPERIMENT_ATTR) or str(workdir.ray_experiment_dir(study.name))
            return StoredRecords(trials, parent, runs, ray_experiment)
    return _library_records(workdir, study)


def _library_records(workdir: Workdir, study: LaunchedStudy) -> StoredRecords:
    from certstudy.study.records.launched import study_spec
    from certstudy.study.records.stored import StoredStudy

    stored = StoredStudy.open(workdir, study_spec(workdir, study.name))
    trials = [
        TrialRecord(t.number, t.state.name, dict(t.params), list(t.values) if t.values else None, dict(t.user_attrs))
        for t in stored.optuna.get_trials(deepcopy=False)
    ]

    def record(run: Any) -> StoredRun:
        steps = [m.step for m in stored.tracker.client.get_metric_history(run.info.run_id, SERIES_PROBE)]
        return StoredRun.of(run, max(steps) + 1 if steps else 0)

    parent = record(stored.tracker.client.get_run(stored.parent_run_id)) if stored.parent_run_id else None
    runs = {number: record(run) for number, run in stored.trial_runs().items()}
    return StoredRecords(trials, parent, runs, stored.ray_experiment)


def study_status(workdir: Workdir, study: str) -> StudyStatus:
    launched = LaunchedStudy.read(workdir, study)
    records = read_records(workdir, launched)
    parent_status = "-"
    # Runs left RUNNING by a driver that could not close them (killed, or its disk full) are
    # interrupted, not running, when no certstudy process holds the study.
    holder = running_holder(workdir, study)
    orphaned = holder is None
    live = {} if orphaned else _progress(workdir, study)
    if records.parent is not None:
        parent = records.parent
        parent_status = f"{parent.info.status} ({parent.data.tags.get(STATUS_TAG, '')})"
        if orphaned and parent.info.status == "RUNNING":
            parent_status = "interrupted (RUNNING in MLflow, but no certstudy process runs the study)"
    rows = []
    objective = launched.objective.metric
    for t in records.trials:
        state = State.INTERRUPTED if orphaned and t.state == "RUNNING" else state_name(t.state)
        value = t.values[0] if t.values else None
        row = TrialRow(t.number, state, dict(t.params), value)
        run = records.runs.get(t.number)
        if run is not None:
            metrics = summary_metrics(run.data.metrics)
            row.epochs = run.epochs
            row.run_status = State.INTERRUPTED if orphaned and run.info.status == "RUNNING" else run.info.status
            if state in FINISHED and objective in metrics:
                row.value = metrics[objective]  # the best epoch's, where the trial ended on one
            tags = run.data.tags
            if PRUNE_REASON_TAG in tags:
                row.note = f"pruned at epoch {tags.get(PRUNED_AT_TAG)} ({tags[PRUNE_REASON_TAG]})"
            elif REASON_TAG in tags:
                row.note = tags[REASON_TAG]
        elif FAIL_REASON_ATTR in t.user_attrs:
            row.note = str(t.user_attrs[FAIL_REASON_ATTR])
        now = live.get(str(t.number))
        if now is not None and state == State.RUNNING:
            row.phase = str(now.get("phase", "-"))
            row.epochs = max(row.epochs or 0, int(now.get("epoch", 0)))
        rows.append(row)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    resumable = (
        orphaned and can_resume(records.ray_experiment) and sum(counts.get(s, 0) for s in ENDED) < launched.num_trials
    )
    return StudyStatus(launched, rows, parent_status, resumable, counts, holder)


def _progress(workdir: Workdir, study: str) -> dict[str, dict[str, Any]]:
    """The running driver's progress file: each running trial's epoch and phase ({} when absent)."""
    import json

    try:
        data = json.loads(workdir.progress_file(study).read_text())
        trials = data["trials"]
        return trials if isinstance(trials, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}

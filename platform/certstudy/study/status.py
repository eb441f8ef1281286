"""``certstudy status``: where a study stands, from its stored state alone (Ray is not started).

The Optuna storage says what each trial proposed and how it ended (COMPLETE, PRUNED, FAIL, or
still RUNNING); the MLflow child runs add the epochs reached, the run's own status and why a run
failed or was pruned; the Ray Tune folder says whether an interrupted study can be resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna

from certstudy.study.export import study_spec
from certstudy.study.lock import running_holder
from certstudy.study.records import (
    FAIL_REASON_ATTR,
    PRUNE_REASON_TAG,
    PRUNED_AT_TAG,
    REASON_TAG,
    STATUS_TAG,
    summary_metrics,
)
from certstudy.study.spec import StudySpec
from certstudy.study.stored import StoredStudy, can_resume
from certstudy.workdir import Workdir

STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def state_name(state: optuna.trial.TrialState) -> str:
    """An Optuna trial state in certstudy's words (those of progress, MLflow tags and counts)."""
    return STATES.get(state.name, state.name.lower())


@dataclass
class TrialRow:
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    epochs: int | None = None
    run_status: str = "-"
    note: str = ""


@dataclass
class StudyStatus:
    spec: StudySpec
    rows: list[TrialRow]
    parent_status: str
    resumable: bool
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def best(self) -> TrialRow | None:
        obj = self.spec.objectives[0]
        done = [
            r
            for r in self.rows
            if r.state in ("completed", "pruned") and r.value is not None and math.isfinite(r.value)
        ]
        if not done:
            return None
        return (max if obj.mode == "max" else min)(done, key=lambda r: r.value)  # type: ignore[arg-type, return-value]


def study_status(workdir: Workdir, study: str) -> StudyStatus:
    spec = study_spec(workdir, study)
    stored = StoredStudy.open(workdir, spec)
    ot, tracker = stored.optuna, stored.tracker
    parent_status = "-"
    # Runs left RUNNING by a driver that could not close them (killed, or its disk full) are
    # interrupted, not running, when no certstudy process holds the study.
    orphaned = running_holder(workdir, study) is None
    if stored.parent_run_id:
        parent = tracker.client.get_run(stored.parent_run_id)
        parent_status = f"{parent.info.status} ({parent.data.tags.get(STATUS_TAG, '')})"
        if orphaned and parent.info.status == "RUNNING":
            parent_status = "interrupted (RUNNING in MLflow, but no certstudy process runs the study)"
    runs = stored.trial_runs()
    rows = []
    objective = spec.objectives[0].metric
    for t in ot.get_trials(deepcopy=False):
        state = "interrupted" if orphaned and t.state == optuna.trial.TrialState.RUNNING else state_name(t.state)
        value = t.values[0] if t.values else None
        row = TrialRow(t.number, state, dict(t.params), value)
        run = runs.get(t.number)
        if run is not None:
            metrics = summary_metrics(run.data.metrics)
            steps = [m.step for m in tracker.client.get_metric_history(run.info.run_id, "train/loss")]
            row.epochs = max(steps) + 1 if steps else 0
            row.run_status = "interrupted" if orphaned and run.info.status == "RUNNING" else run.info.status
            if state in ("completed", "pruned") and objective in metrics:
                row.value = metrics[objective]  # the best epoch's, where the trial ended on one
            tags = run.data.tags
            if PRUNE_REASON_TAG in tags:
                row.note = f"pruned at epoch {tags.get(PRUNED_AT_TAG)} ({tags[PRUNE_REASON_TAG]})"
            elif REASON_TAG in tags:
                row.note = tags[REASON_TAG]
        elif FAIL_REASON_ATTR in t.user_attrs:
            row.note = str(t.user_attrs[FAIL_REASON_ATTR])
        rows.append(row)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    resumable = (
        can_resume(stored.ray_experiment)
        and counts.get("completed", 0) + counts.get("pruned", 0) + counts.get("failed", 0) < spec.search.num_trials
    )
    return StudyStatus(spec, rows, parent_status, resumable, counts)

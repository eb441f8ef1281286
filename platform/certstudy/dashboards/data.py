"""A finished (or running) study's data for its dashboard: Optuna trials joined with MLflow runs.

Optuna gives each trial's searched parameters and state; the study's latest parent run in MLflow
gives each trial's metrics (at its best epoch where it ended on one), tags (method, prune reason)
and per-epoch series for the learning curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna

from certstudy.study.records.names import (
    FINISHED,
    METHOD_LABEL_TAG,
    PRUNE_REASON_TAG,
    PRUNED_AT_TAG,
    STATUS_TAG,
    summary_metrics,
)
from certstudy.study.records.status import state_name
from certstudy.study.records.stored import StoredStudy
from certstudy.study.spec.schema import StudySpec
from certstudy.workdir import Workdir

SERIES = ("train/robust_acc", "val/robust_acc")


@dataclass
class TrialData:
    number: int
    state: str  # completed | pruned | failed | running | killed
    method: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    run_id: str | None = None
    prune_reason: str | None = None
    pruned_at: int | None = None

    def value(self, metric: str) -> float:
        return self.metrics.get(metric, math.nan)


@dataclass
class StudyData:
    spec: StudySpec
    trials: list[TrialData]
    stored: StoredStudy
    workdir: Workdir

    @property
    def optuna_study(self) -> optuna.Study:
        return self.stored.optuna

    @property
    def parent_run_id(self) -> str | None:
        return self.stored.parent_run_id

    @property
    def finished(self) -> list[TrialData]:
        return [t for t in self.trials if t.state in FINISHED]

    @property
    def searched(self) -> list[str]:
        return sorted({k for t in self.trials for k in t.params})

    @property
    def log_searched(self) -> set[str]:
        """The parameters Optuna searched on a log scale (their distributions say so)."""
        return {
            name
            for t in self.optuna_study.get_trials(deepcopy=False)
            for name, dist in t.distributions.items()
            if getattr(dist, "log", False)
        }


def load_study_data(workdir: Workdir, spec: StudySpec, series: tuple[str, ...] = SERIES) -> StudyData:
    stored = StoredStudy.open(workdir, spec)
    ot, tracker, runs = stored.optuna, stored.tracker, stored.trial_runs()
    trials = []
    for t in ot.get_trials(deepcopy=False):
        run = runs.get(t.number)
        tags = run.data.tags if run else {}
        data = TrialData(
            t.number,
            tags.get(STATUS_TAG) or state_name(t.state),
            tags.get(METHOD_LABEL_TAG, str(t.params.get("method", spec.method_entries[0].key))),
            dict(t.params),
        )
        if run is not None:
            data.run_id = run.info.run_id
            data.metrics = summary_metrics(run.data.metrics)
            if PRUNE_REASON_TAG in tags:
                data.prune_reason, data.pruned_at = tags[PRUNE_REASON_TAG], int(tags.get(PRUNED_AT_TAG, -1))
            for metric in series:
                history = tracker.client.get_metric_history(run.info.run_id, metric)
                if history:
                    data.series[metric] = sorted((m.step, m.value) for m in history)
        trials.append(data)
    return StudyData(spec, trials, stored, workdir)

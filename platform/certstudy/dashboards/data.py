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

from certstudy.errors import CertstudyError
from certstudy.study.results import summary_metrics
from certstudy.study.spec import StudySpec
from certstudy.study.status import state_name
from certstudy.study.tracking import OPTUNA_TAG, PRUNE_REASON_TAG, PRUNED_AT_TAG, STATUS_TAG, Tracker
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
    optuna_study: optuna.Study
    parent_run_id: str | None
    experiment_id: str | None
    workdir: Workdir

    @property
    def finished(self) -> list[TrialData]:
        return [t for t in self.trials if t.state in ("completed", "pruned")]

    @property
    def searched(self) -> list[str]:
        return sorted({k for t in self.trials for k in t.params})


def load_study_data(workdir: Workdir, spec: StudySpec, series: tuple[str, ...] = SERIES) -> StudyData:
    try:
        ot = optuna.load_study(study_name=spec.name, storage=workdir.optuna_url(spec.name))
    except KeyError:
        raise CertstudyError(f"study {spec.name!r} has no Optuna study in {workdir.optuna_url(spec.name)}") from None
    tracker = Tracker(ot.user_attrs.get("mlflow_tracking_uri") or spec.tracking_uri(workdir.tracking_uri))
    parent_id = ot.user_attrs.get("mlflow_parent_run_id")
    experiment_id = ot.user_attrs.get("mlflow_experiment_id")
    runs: dict[int, Any] = {}
    if parent_id and experiment_id:
        for run in tracker.child_runs(experiment_id, parent_id):
            number = run.data.tags.get(OPTUNA_TAG)
            if number not in (None, "None") and (int(number) not in runs or run.info.status == "FINISHED"):
                runs[int(number)] = run
    trials = []
    for t in ot.get_trials(deepcopy=False):
        run = runs.get(t.number)
        tags = run.data.tags if run else {}
        data = TrialData(t.number, tags.get(STATUS_TAG) or state_name(t.state), tags.get("certstudy.method_label", str(t.params.get("method", spec.method_entries[0].key))), dict(t.params))
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
    return StudyData(spec, trials, ot, parent_id, experiment_id, workdir)

"""Resuming a study's MLflow records: what an interrupted driver had not written yet.

``backfill`` runs on resume, before any trial runs again (driver thread, nothing queued yet): each
trial's last epoch in MLflow is remembered, so an epoch re-run from an older checkpoint (or from the
start, when the trial had none) is not logged twice; then the per-epoch results Ray wrote to a
trial's ``result.json`` that MLflow lacks (they were in the write buffer when the driver was
killed) are logged, and a trial whose run was never created gets it. Ray keeps ``result.json`` in
its local staging folder and syncs it to the experiment folder now and then, so a trial may have
none there: MLflow's own series is what dedups. ``unclosed`` names the trials that had ended in Ray
Tune without their MLflow run being closed (their end was still buffered); the callback closes
them when Ray Tune hands over its restored trials.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from certstudy.study.engine.trial_runs import TrialRuns
from certstudy.study.records.names import (
    BEST_EPOCH_KEY,
    SERIES_PROBE,
    TRIAL_ID_TAG,
    failure_reason,
    result_epoch,
    series_metrics,
)


def read_results(path: Path) -> list[dict[str, Any]]:
    """The reports in a trial's ``result.json`` (one JSON object per line); a line cut short by a kill
    ends the list."""
    reports = []
    with open(path) as fh:
        for line in fh:
            try:
                reports.append(json.loads(line))
            except ValueError:
                break
    return reports


def backfill(runs: TrialRuns, experiment_folder: str) -> tuple[int, dict[str, int]]:
    """Back-fills ``runs`` from the experiment folder (module docstring); returns how many epochs
    were logged and each trial's last epoch now in MLflow."""
    tracker = runs.tracker
    logged: dict[str, set[int]] = {}
    for run in tracker.child_runs(runs.experiment_id, runs.parent_run_id):
        trial_id = run.data.tags.get(TRIAL_ID_TAG)
        if trial_id:
            runs.runs[trial_id] = run.info.run_id
            logged[trial_id] = {m.step for m in tracker.client.get_metric_history(run.info.run_id, SERIES_PROBE)}
    filled = 0
    if "://" not in experiment_folder:  # remote storage: the resumed trials re-report from their checkpoints
        for results_file in sorted(Path(experiment_folder).glob("*/result.json")):
            filled += _fill_from(runs, results_file, logged)
    return filled, {trial_id: max(steps, default=-1) for trial_id, steps in logged.items()}


def _fill_from(runs: TrialRuns, results_file: Path, logged: dict[str, set[int]]) -> int:
    """Logs the epochs of one ``result.json`` that MLflow lacks; adds them to ``logged``."""
    reports = read_results(results_file)
    if not reports:
        return 0
    trial_id, config = str(reports[0]["trial_id"]), dict(reports[0].get("config", {}))
    run_id = runs.runs.get(trial_id) or runs.run_id(trial_id, config)
    steps = logged.setdefault(trial_id, set())
    missing = {}
    for result in reports:
        epoch = result_epoch(result)
        if BEST_EPOCH_KEY not in result and failure_reason(result) is None and epoch not in steps:
            missing[epoch] = series_metrics(result)
    if missing:
        now = int(time.time() * 1000)
        runs.tracker.log_metric_steps(run_id, [(m, e, now) for e, m in sorted(missing.items())])
        steps.update(missing)
    return len(missing)


def unclosed(runs: TrialRuns, trials: list, ended: set[str]) -> list[tuple[Any, bool]]:
    """The restored trials that ended in Ray Tune but whose MLflow run is still open, each with
    whether its last report still has to be logged."""
    out = []
    for trial in trials:
        if trial.status not in ("TERMINATED", "ERROR") or trial.trial_id in ended:
            continue
        run_id = runs.runs.get(trial.trial_id) or runs.tracker.find_trial_run(
            runs.experiment_id, runs.parent_run_id, trial.trial_id
        )
        run = runs.tracker.client.get_run(run_id) if run_id else None
        if run is not None and run.info.status in ("FINISHED", "FAILED"):
            continue
        out.append((trial, bool(trial.last_result) and BEST_EPOCH_KEY not in (run.data.metrics if run else {})))
    return out

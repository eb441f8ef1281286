"""Every name certstudy writes into its records, and the codecs between them: one home.

A study's state lives in three stores: MLflow (runs, tags, metrics, artifacts), the Optuna storage
(trials, user attrs) and the results a trial reports through Ray Tune. Writers (the session, the
MLflow callback, the searcher, ``certstudy run``) and readers (status, export, the dashboards,
bench) import the names from here, so a record is read under the name it was written with. The
metric-name patterns live in ``certstudy.metric_names`` (the trial layer reports under them) and
are re-exported here for the study layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from certstudy.metric_names import (
    ALARM_TAG,
    BEST_EPOCH_KEY,
    BEST_PREFIX,
    CERTIFICATION_METRIC,
    END_ONLY_METRIC,
    EPOCH_METRICS,
    SPLIT_METRIC,
    TAG_PREFIX,
    TRAIN_LOSS,
    per_epoch_metric,
)
from certstudy.workdir import STUDY_FILE

# --- MLflow: run tags ---------------------------------------------------------------------------

ROLE_TAG = "certstudy.role"  # "study" (the parent run), "trial" (a child run), "run" (certstudy run)
STUDY_TAG = "certstudy.study"
RANK_TAG = "certstudy.rank"  # a registered model version's rank in its export
RANKED_BY_TAG = "certstudy.metric"  # the metric it was ranked by
TRIAL_TAG = "certstudy.trial"  # the Optuna trial number it came from
STATUS_TAG = "certstudy.status"  # running | completed | pruned | failed | killed | finished
REASON_TAG = "certstudy.fail_reason"
METHOD_TAG = "certstudy.method"  # the registered method's name
METHOD_LABEL_TAG = "certstudy.method_label"  # the study entry's label (several entries may share a method)
DATASET_TAG = "certstudy.dataset"
MODEL_TAG = "certstudy.model"
RETRIES_TAG = "certstudy.retries"
PRUNE_REASON_TAG = "prune_reason"  # the pruner's name, or "overfitting"
PRUNED_AT_TAG = "pruned_at_epoch"  # 0-based, like the metrics' epoch steps
PRUNE_DETAIL_TAG = "certstudy.prune_detail"
TRIAL_ID_TAG = "ray.trial_id"
OPTUNA_TAG = "optuna.trial_number"
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment on the view this names
EXPERIMENT_KIND = "custom_model_development"  # the runs table (not the GenAI traces overview)
EXPERIMENT_TAGS = {"certstudy": "1", EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}  # an MLflow experiment certstudy created

# --- MLflow: artifacts --------------------------------------------------------------------------

STUDY_ARTIFACT = STUDY_FILE  # the study file, in the parent run (and a `certstudy run`'s run)
TRIAL_STUDY_ARTIFACT = "trial_study.yaml"  # the trial's resolved, re-runnable study file
MODEL_ARTIFACT_DIR = "model"
DASHBOARD_ARTIFACT = "dashboard.html"

# --- Optuna: study and trial user attrs ---------------------------------------------------------

SERIES_PROBE = TRAIN_LOSS
"""Reported after every evaluated epoch (step = epoch) and logged with the epoch's other metrics in
one batch: whether MLflow has an epoch, and how many a run has, is read from this metric."""

PARENT_ATTR = "mlflow_parent_run_id"
EXPERIMENT_ATTR = "mlflow_experiment_id"
TRACKING_ATTR = "mlflow_tracking_uri"
RAY_EXPERIMENT_ATTR = "ray_experiment"
RAY_STATE_DIGESTS_ATTR = "ray_state_hmac"  # file name -> recent keyed digests (study/records/state_digests.py)
RAY_TRIAL_ID_ATTR = "ray_trial_id"
FAIL_REASON_ATTR = "fail_reason"
PRUNE_REASON_ATTR = "prune_reason"
PRUNED_AT_ATTR = "pruned_at_epoch"
PRUNE_DETAIL_ATTR = "prune_detail"
OVERFITTING_SERIES_ATTR = "overfitting_series"  # epoch -> [metric, gap] the overfitting rule reads

# --- export: the provenance block of an exported configuration -----------------------------------

PROVENANCE = "provenance"
PROV_STUDY = "study"
PROV_RANK = "rank"
PROV_BY = "by"  # the metric ranked by, or PROV_PARETO
PROV_MODE = "mode"
PROV_TRIAL = "trial"
PROV_OBJECTIVES = "objectives"
PROV_PARETO = "pareto"
PROV_RUN_ID = "mlflow_run_id"
PROV_OPTUNA_TRIAL = "optuna_trial"
PROV_BEST_EPOCH = "best_epoch"
PROV_METRICS = "metrics"

# --- a trial's results (Ray Tune reports) -------------------------------------------------------

FAILURE_KEY = "certstudy_failure"  # a trial that failed in its own code reports its reason here
OPTUNA_TRIAL_KEY = "_optuna_trial"  # in a trial's config: its Optuna trial number

__all__ = [
    "ALARM_TAG",
    "BEST_EPOCH_KEY",
    "BEST_PREFIX",
    "CERTIFICATION_METRIC",
    "END_ONLY_METRIC",
    "EPOCH_METRICS",
    "SPLIT_METRIC",
    "TAG_PREFIX",
    "per_epoch_metric",
]


# --- where a trial or a study stands ----------------------------------------------------------


class State(StrEnum):
    """certstudy's words for where a trial or a study stands, one spelling everywhere: the live
    progress and its counts, the MLflow ``STATUS_TAG``, ``certstudy status`` (Optuna's states in
    these words), the results table and export."""

    RUNNING = "running"
    COMPLETED = "completed"
    PRUNED = "pruned"
    FAILED = "failed"
    KILLED = "killed"
    INTERRUPTED = "interrupted"  # RUNNING in the stores, but no process holds the study
    WAITING = "waiting"


FINISHED = frozenset({State.COMPLETED, State.PRUNED})  # ended with metrics: ranked, exported, tabulated
ENDED = FINISHED | {State.FAILED}  # counts against the planned trials


# --- prune decisions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneDecision:
    reason: str  # the pruner's name, or "overfitting"
    epoch: int
    detail: str = ""

    def tags(self) -> dict[str, str]:
        """The pruned trial's MLflow run tags."""
        return {
            STATUS_TAG: State.PRUNED,
            PRUNE_REASON_TAG: self.reason,
            PRUNED_AT_TAG: str(self.epoch),
            PRUNE_DETAIL_TAG: self.detail,
        }

    def attrs(self) -> dict[str, Any]:
        """The pruned trial's Optuna user attrs."""
        return {PRUNE_REASON_ATTR: self.reason, PRUNED_AT_ATTR: self.epoch, PRUNE_DETAIL_ATTR: self.detail}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> PruneDecision | None:
        if PRUNE_REASON_ATTR not in attrs:
            return None
        return cls(
            str(attrs[PRUNE_REASON_ATTR]), int(attrs.get(PRUNED_AT_ATTR, -1)), str(attrs.get(PRUNE_DETAIL_ATTR, ""))
        )

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> PruneDecision | None:
        if PRUNE_REASON_TAG not in tags:
            return None
        return cls(tags[PRUNE_REASON_TAG], int(tags.get(PRUNED_AT_TAG, -1)), tags.get(PRUNE_DETAIL_TAG, ""))


# --- reading results ----------------------------------------------------------------------------


def result_epoch(result: Mapping[str, Any]) -> int:
    """The epoch a result reports (0-based; Ray's 1-based iteration count where there is none)."""
    return int(result.get("epoch", result.get("training_iteration", 0)))


def failure_reason(result: Mapping[str, Any] | None) -> str | None:
    if not result:
        return None
    reason = result.get(FAILURE_KEY)
    return str(reason) if reason else None


def result_tags(result: Mapping[str, Any]) -> dict[str, str]:
    """String results under ``tags/<name>``: run tags (e.g. ``hr.bound_holds``, ``certstudy.alarm``)."""
    return {k[len(TAG_PREFIX) :]: str(v) for k, v in result.items() if k.startswith(TAG_PREFIX) and isinstance(v, str)}


def numeric_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The trial's metrics in a result: 'section/name' keys with finite numeric values."""
    out = {}
    for key, value in result.items():
        if "/" in key and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def series_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """What MLflow records for one report at its epoch step: the numeric metrics, less the
    per-epoch names that the last report of a best-epoch trial repeats with the best epoch's value
    (they stay under ``best/``, so the learning curves are not bent at the end)."""
    out = numeric_metrics(result)
    return {k: v for k, v in out.items() if BEST_PREFIX + k not in out}


def summary_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A trial's metrics as results and exports read them: the best epoch's values (``best/<name>``)
    in place of the last epoch's, where the trial ended on its best epoch."""
    out = dict(metrics)
    out.update(
        {k[len(BEST_PREFIX) :]: v for k, v in metrics.items() if k.startswith(BEST_PREFIX) and k != BEST_EPOCH_KEY}
    )
    return out

"""Keys the trainable adds to a trial's results beside the trial's own metrics.

A trial that fails inside its own code (diverged loss, out of memory, bad data) does not raise
into Ray, which would retry it like a lost worker; it reports one last result carrying
``FAILURE_KEY`` with the reason, and the searcher and tracker record it as failed.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

FAILURE_KEY = "certstudy_failure"
OPTUNA_TRIAL_KEY = "_optuna_trial"
BEST_PREFIX = "best/"
BEST_EPOCH_KEY = "best/epoch"  # in the last report of a trial that ended on its best epoch


def result_epoch(result: Mapping[str, Any]) -> int:
    """The epoch a result reports (0-based; Ray's 1-based iteration count where there is none)."""
    return int(result.get("epoch", result.get("training_iteration", 0)))


def failure_reason(result: Mapping[str, Any] | None) -> str | None:
    if not result:
        return None
    reason = result.get(FAILURE_KEY)
    return str(reason) if reason else None


def collapse(text: str, limit: int = 500) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(exc: BaseException, limit: int = 500) -> str:
    return collapse(f"{type(exc).__name__}: {exc}", limit)


TAG_PREFIX = "tags/"


def result_tags(result: Mapping[str, Any]) -> dict[str, str]:
    """String results under ``tags/<name>``: run tags (e.g. ``hr.bound_holds``)."""
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
    out.update({k[len(BEST_PREFIX) :]: v for k, v in metrics.items() if k.startswith(BEST_PREFIX) and k != BEST_EPOCH_KEY})
    return out

"""Library chatter off a study's console (certstudy's progress lines replace Ray's output), and
Ray Tune's extra per-result writers off the driver.

Light on purpose (no Ray, MLflow or Optuna import): ``certstudy launch`` calls it before it starts
a local Ray early, since the raylet and its workers take the environment set here.
"""

from __future__ import annotations

import logging
import os
import sys

from certstudy.study.engine.disk_full_stop import quiet_disk_full_logs


def quiet_libraries(verbose: bool) -> None:
    """Our own progress replaces Ray's console output; keep the libraries' chatter off it."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # Tune's default CSV and TensorBoard writers took a fifth of the driver's CPU in a 2-trial study
    # of 0.2 s epochs (py-spy); MLflow holds the series, and the study adds Tune's JSON writer
    # itself (``result.json``: resume back-fills MLflow from it).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # An unreachable tracking server is retried by the tracking callback (with a warning, for
    # tracking.unreachable_wait_s); MLflow's own backoff would block each call for minutes first.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if not sys.stdout.isatty():  # a log file gets plain lines: no colour codes on Ray's worker lines
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if not verbose:
        quiet_disk_full_logs()
        for name in ("mlflow", "alembic", "ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.WARNING)

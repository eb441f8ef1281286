"""The Ray Tune function trainable: resolves the trial's config and runs the plain trial loop.

It imports neither Optuna nor MLflow (workers never talk to them: the driver records), and it
turns an exception raised by the trial's own code into a final ``FAILURE_KEY`` report rather than
an error, so Ray's retries stay reserved for lost workers and nodes.
"""

from __future__ import annotations

import math
from typing import Any

from ray import tune

from certstudy.study.results import FAILURE_KEY, one_line
from certstudy.study.space import resolve
from certstudy.study.spec import StudySpec
from certstudy.trial import run_trial


def _from_ray(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "ray"


def train_trial(config: dict[str, Any], study: dict[str, Any], data_dir: str) -> None:
    spec = StudySpec.model_validate(study)
    cfg = resolve(spec, config).trial_config()
    last: dict[str, float] = {}

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        last.clear()
        last.update(metrics)
        # Objectives measured only at the end (certified val accuracy) are NaN before it: Ray
        # requires every objective in every result, and the searcher skips NaN intermediates.
        metrics = {**{o.metric: math.nan for o in spec.objectives}, **metrics}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            run_trial(cfg, report, data_dir=data_dir)
        else:
            with checkpoint.as_directory() as resume_dir:
                run_trial(cfg, report, data_dir=data_dir, resume_from=resume_dir)
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's failure reason
        if _from_ray(exc):
            raise
        objectives = {o.metric: last.get(o.metric, math.nan) for o in spec.objectives}
        tune.report({**objectives, "epoch": last.get("epoch", -1.0), FAILURE_KEY: one_line(exc)})


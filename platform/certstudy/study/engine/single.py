"""``certstudy run``: train one fixed configuration once, without Ray.

Used to reproduce an exported trial: the same resolved config, seed and thread count give the
same metrics on the same device. By default the run is recorded in MLflow (experiment of the
study, tag ``certstudy.role=run``) so it sits beside the trial it reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from certstudy.errors import SpecError
from certstudy.study.records.names import (
    METHOD_TAG,
    PROV_METRICS,
    STUDY_ARTIFACT,
    result_tags,
    series_metrics,
    summary_metrics,
)
from certstudy.study.spec.loading import dump_study
from certstudy.study.spec.schema import StudySpec
from certstudy.trial import run_trial
from certstudy.trial.checkpoint import ARTIFACTS_DIR, MODEL_FILE
from certstudy.workdir import Workdir


@dataclass
class RunOutcome:
    metrics: dict[str, float | str]
    run_id: str | None = None
    compared: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (exported, now)

    @property
    def max_abs_diff(self) -> float:
        return max((abs(a - b) for a, b in self.compared.values()), default=0.0)


def run_fixed(
    spec: StudySpec,
    workdir: Workdir,
    *,
    track: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    source: str = "study",
) -> RunOutcome:
    if not spec.is_fixed():
        raise SpecError(
            source,
            "search",
            "<searched parameters>",
            "certstudy run needs a study with every hyperparameter fixed (one method, no search); use certstudy launch",
        )
    cfg = spec.trial_config()
    workdir.ensure()
    tracker = run_id = None
    if track:
        from certstudy.study.records.names import ROLE_TAG, STUDY_TAG
        from certstudy.study.records.tracking import Tracker, flatten

        tracker = Tracker(spec.tracking_uri(workdir), workdir.artifact_root)
        exp = tracker.experiment_id(spec.experiment_name)
        run = tracker.client.create_run(
            exp, run_name=f"{spec.name}-run", tags={ROLE_TAG: "run", STUDY_TAG: spec.name, METHOD_TAG: cfg.method.name}
        )
        run_id = run.info.run_id
        for key, value in flatten(cfg.model_dump(mode="json")).items():
            tracker.client.log_param(run_id, key, value[:6000])
        tracker.client.log_text(run_id, yaml.safe_dump(dump_study(spec), sort_keys=False), STUDY_ARTIFACT)

    def report(metrics: dict[str, float | str], checkpoint_dir: str | None) -> None:
        if tracker is not None and run_id is not None:
            tracker.log_metrics(run_id, series_metrics(metrics), step=int(metrics["epoch"]))
            for key, value in result_tags(metrics).items():
                tracker.client.set_tag(run_id, key, value)
            if checkpoint_dir and "test/clean_acc" in metrics:  # the end: the model that was tested
                tracker.log_artifacts(run_id, [Path(checkpoint_dir) / MODEL_FILE], "model")
                tracker.log_artifact_dir(run_id, Path(checkpoint_dir) / ARTIFACTS_DIR)
        if on_epoch:
            on_epoch(metrics)

    try:
        metrics = run_trial(cfg, report, data_dir=str(workdir.data_dir))
    except BaseException:
        if tracker is not None and run_id is not None:
            tracker.end_run(run_id, "FAILED")
        raise
    if tracker is not None and run_id is not None:
        tracker.end_run(run_id, "FINISHED")
    outcome = RunOutcome(metrics, run_id)
    exported = (spec.provenance or {}).get(PROV_METRICS) or {}
    reached = summary_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
    for key, value in exported.items():
        now = reached.get(key)
        if isinstance(now, float) and math.isfinite(value):
            outcome.compared[key] = (float(value), now)
    return outcome

"""A launched study's records, found from its work directory alone.

``launch`` writes, as attributes of the Optuna study (sqlite in the work directory), where the rest
lives: the MLflow tracking URI, experiment and parent run, and the Ray Tune experiment. ``resume``,
``status`` and the dashboard all start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow.entities import Run

from certstudy.errors import CertstudyError
from certstudy.study.records import EXPERIMENT_ATTR, OPTUNA_TAG, PARENT_ATTR, RAY_EXPERIMENT_ATTR, TRACKING_ATTR
from certstudy.study.spec import StudySpec
from certstudy.study.tracking import Tracker
from certstudy.workdir import Workdir


@dataclass
class StoredStudy:
    spec: StudySpec
    optuna: optuna.Study
    tracker: Tracker
    parent_run_id: str | None
    experiment_id: str | None
    ray_experiment: str

    @classmethod
    def open(cls, workdir: Workdir, spec: StudySpec, artifact_root: Path | None = None) -> StoredStudy:
        try:
            ot = optuna.load_study(study_name=spec.name, storage=workdir.optuna_url(spec.name))
        except KeyError:
            raise CertstudyError(
                f"study {spec.name!r} has no Optuna study in {workdir.optuna_url(spec.name)} (it never got past set-up)"
            ) from None
        attrs = ot.user_attrs
        tracker = Tracker(attrs.get(TRACKING_ATTR) or spec.tracking_uri(workdir.tracking_uri), artifact_root)
        ray_experiment = attrs.get(RAY_EXPERIMENT_ATTR) or str(workdir.ray_experiment_dir(spec.name))
        return cls(spec, ot, tracker, attrs.get(PARENT_ATTR), attrs.get(EXPERIMENT_ATTR), ray_experiment)

    def trial_runs(self) -> dict[int, Run]:
        """The MLflow child run of each Optuna trial number; where a trial has several (a run left
        by a lost driver beside the one that finished it), the finished one."""
        runs: dict[int, Run] = {}
        if not (self.parent_run_id and self.experiment_id):
            return runs
        for run in self.tracker.child_runs(self.experiment_id, self.parent_run_id):
            number = run.data.tags.get(OPTUNA_TAG)
            if number not in (None, "None") and (int(number) not in runs or run.info.status == "FINISHED"):
                runs[int(number)] = run
        return runs

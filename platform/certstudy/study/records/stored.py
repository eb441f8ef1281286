"""A launched study's records, found from its work directory alone.

``launch`` writes, as attributes of the Optuna study (sqlite in the work directory), where the rest
lives: the MLflow tracking URI, experiment and parent run, and the Ray Tune experiment. ``resume``,
``status`` and the dashboard all start here.

Reading a study never writes: a sqlite store is checked to exist and to be an intact database
before MLflow or Optuna open it (either would create a missing or empty file, and run its schema
set-up on it), and a missing, empty or corrupt one is one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow.entities import Run
from sqlalchemy.exc import SQLAlchemyError

from certstudy.errors import CertstudyError
from certstudy.study.records.names import EXPERIMENT_ATTR, OPTUNA_TAG, PARENT_ATTR, RAY_EXPERIMENT_ATTR, TRACKING_ATTR
from certstudy.study.records.stored_sqlite import existing_store
from certstudy.study.records.tracking import Tracker
from certstudy.study.spec.schema import StudySpec
from certstudy.workdir import TRACKING_STORE, Workdir


def study_tracking_uri(workdir: Workdir, spec: StudySpec, override: str | None = None) -> str:
    """Where a launched study's MLflow runs are: ``override`` (``--tracking-uri``), else the store it
    was launched with (``stores.json``), else its study file's (or the work directory's) store."""
    return override or workdir.recorded_store(spec.name, TRACKING_STORE) or spec.tracking_uri(workdir)


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
        url = existing_store(workdir.optuna_url(spec.name), "Optuna storage")
        try:
            ot = optuna.load_study(study_name=spec.name, storage=url)
        except KeyError:
            raise CertstudyError(
                f"study {spec.name!r} has no Optuna study in {url} (it never got past set-up, or was deleted there)"
            ) from None
        except (ImportError, SQLAlchemyError) as exc:
            cause = exc.__cause__ or exc
            raise CertstudyError(
                f"optuna storage {url}: {' '.join(str(cause).strip().splitlines()[:1]) or type(cause).__name__}"
            ) from None
        attrs = ot.user_attrs
        uri = existing_store(attrs.get(TRACKING_ATTR) or study_tracking_uri(workdir, spec), "MLflow tracking store")
        tracker = Tracker(uri, artifact_root)
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

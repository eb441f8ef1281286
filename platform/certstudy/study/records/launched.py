"""A launched study's few defining fields, read from ``<study>/study.yaml`` as plain YAML.

``launch`` writes the study as validated, defaults included, so its name, objectives, planned trial
count and MLflow experiment are there as written. ``status`` and ``export`` read them without the
study schema, whose registries import torch (seconds, for commands that show or copy records).
A file that lacks them (edited by hand) is validated instead, which names what is wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from certstudy.errors import SpecError
from certstudy.safe_yaml import load_file
from certstudy.workdir import Workdir

if TYPE_CHECKING:
    from certstudy.study.spec.schema import StudySpec


@dataclass(frozen=True)
class LaunchedObjective:
    metric: str
    mode: str

    def model_dump(self) -> dict[str, Any]:
        """As the schema's ``Objective`` dumps (export writes it into provenance)."""
        return asdict(self)


@dataclass(frozen=True)
class LaunchedStudy:
    name: str
    objectives: tuple[LaunchedObjective, ...]
    num_trials: int
    experiment: str  # the MLflow experiment: tracking.experiment, else the name

    @property
    def objective(self) -> LaunchedObjective:
        return self.objectives[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @classmethod
    def read(cls, workdir: Workdir, study: str) -> LaunchedStudy:
        workdir.check_current(study)
        path = workdir.study_file(study)
        if not path.exists():
            raise SpecError(
                str(workdir.root), "study", study, f"no study of that name in this work directory (looked for {path})"
            )
        try:
            (doc,) = load_file(path, "study file")
            objectives = tuple(LaunchedObjective(str(o["metric"]), str(o["mode"])) for o in doc["objectives"])
            experiment = (doc.get("tracking") or {}).get("experiment") or doc["name"]
            if not objectives:
                raise ValueError("no objectives")
            launched = cls(str(doc["name"]), objectives, int(doc["search"]["num_trials"]), str(experiment))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            spec = study_spec(workdir, study)
            return cls(
                spec.name,
                tuple(LaunchedObjective(o.metric, o.mode) for o in spec.objectives),
                spec.search.num_trials,
                spec.experiment_name,
            )
        workdir.check_current(study, launched.name)
        return launched


def study_spec(workdir: Workdir, study: str) -> StudySpec:
    """The study as launched from its current folder (``Workdir.check_current``), validated by the
    schema (which imports torch: seconds; ``LaunchedStudy.read`` is the light reading)."""
    workdir.check_current(study)
    path = workdir.study_file(study)
    if not path.exists():
        raise SpecError(
            str(workdir.root), "study", study, f"no study of that name in this work directory (looked for {path})"
        )
    from certstudy.study.spec.loading import load_study

    spec = load_study(path)
    workdir.check_current(study, spec.name)
    return spec

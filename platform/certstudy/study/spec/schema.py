"""The study file's schema: search distributions, sections and ``StudySpec``.

A study file fixes some hyperparameters (``params``) and searches others (``search``) in each
section that has typed parameters: ``dataset`` (its options), ``model``, every entry of
``methods`` and ``training``. An exported best configuration is a study file too (every value
fixed, ``provenance`` filled in).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from certstudy.errors import SpecError
from certstudy.metric_names import (
    per_epoch_metric,
)
from certstudy.schema import DiscriminatedSchema, Schema
from certstudy.study.spec.pruning import PruningConfig
from certstudy.study.spec.store_urls import (
    FILE_TRACKING_SCHEMES,
    check_tracking_uri,
    confined_sqlite_uri,
    tracking_scheme,
)
from certstudy.trial.config import (
    MAX_SEED,
    CheckpointPolicy,
    ComponentConfig,
    DatasetConfig,
    EvaluationConfig,
    TrainingConfig,
    TrialConfig,
)
from certstudy.workdir import MOVED_ASIDE, NAME_PATTERN, Workdir

# --- search distributions -------------------------------------------------------------------


class FloatRange(DiscriminatedSchema):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("step cannot be combined with log")
        return self

    def probes(self) -> list[Any]:
        return [self.low, self.high]


class IntRange(DiscriminatedSchema):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step != 1:
            raise ValueError("step cannot be combined with log")
        return self

    def probes(self) -> list[Any]:
        return [self.low, self.high]


class Categorical(DiscriminatedSchema):
    type: Literal["categorical"]
    choices: list[bool | int | float | str | None] = Field(min_length=1)

    def probes(self) -> list[Any]:
        return list(self.choices)


Distribution = Annotated[FloatRange | IntRange | Categorical, Field(discriminator="type")]


# --- sections -------------------------------------------------------------------------------


class SearchableComponent(ComponentConfig):
    search: dict[str, Distribution] = Field(default_factory=dict)


class MethodEntry(SearchableComponent):
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_\-]+$", description="distinguishes two entries of one method")

    @property
    def key(self) -> str:
        return self.label or self.name


class SearchableDataset(DatasetConfig):
    search: dict[str, Distribution] = Field(default_factory=dict)


class SearchableTraining(TrainingConfig):
    search: dict[str, Distribution] = Field(default_factory=dict)


class Objective(Schema):
    metric: str
    mode: Literal["min", "max"] = "max"


class SearchConfig(Schema):
    sampler: Literal["auto", "tpe", "nsga2", "random", "grid"] = "auto"
    num_trials: int = Field(8, ge=1, le=100000)
    max_concurrent: int = Field(2, ge=1, le=10000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    max_failures: int = Field(1, ge=0, le=100, description="retries of a trial whose worker died")
    start_points: list[dict[str, Any]] = Field(
        default_factory=list, description="parameter values tried first, by search-space name"
    )


class Resources(Schema):
    cpu: float = Field(1.0, gt=0, le=1024)
    gpu: float = Field(0.0, ge=0, le=64)

    @field_validator("gpu")
    @classmethod
    def _whole_or_fraction(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError("a GPU request above 1 must be a whole number (fractions pack trials onto one GPU)")
        return gpu


LAYOUT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,99}$"
"""A dashboard layout's name: a file stem, so a study file cannot point at a path."""


class Tracking(Schema):
    experiment: str | None = Field(None, pattern=NAME_PATTERN)
    tracking_uri: str | None = None
    unreachable_wait_s: float = Field(
        600.0,
        gt=0,
        le=7 * 86400,
        description="how long the driver keeps training with results buffered while the tracking store is "
        "unreachable, before it stops the study with one line (resume back-fills what was not recorded)",
    )

    @field_validator("tracking_uri")
    @classmethod
    def _file_uri(cls, uri: str | None) -> str | None:
        return None if uri is None else check_tracking_uri(uri, FILE_TRACKING_SCHEMES)


class StudySpec(Schema):
    """A whole study file."""

    name: str = Field(pattern=NAME_PATTERN)

    @field_validator("name")
    @classmethod
    def _not_moved_aside(cls, name: str) -> str:
        if MOVED_ASIDE in name:
            raise ValueError(f"{MOVED_ASIDE!r} is reserved for the folders of earlier launches moved aside")
        return name

    description: str = ""
    dataset: SearchableDataset = Field(default_factory=SearchableDataset)
    model: SearchableComponent = Field(default_factory=lambda: SearchableComponent(name="mlp"))
    method: MethodEntry | None = None
    methods: list[MethodEntry] | None = Field(None, min_length=1)
    training: SearchableTraining = Field(default_factory=SearchableTraining)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="val/robust_acc", mode="max")], min_length=1
    )
    search: SearchConfig = Field(default_factory=SearchConfig)
    pruning: PruningConfig = Field(default_factory=PruningConfig)
    resources: Resources = Field(default_factory=Resources)
    checkpoint: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    tracking: Tracking = Field(default_factory=Tracking)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    dashboard: str = Field(
        "default",
        pattern=LAYOUT_NAME_PATTERN,
        description="dashboard layout: a name in dashboards/ or in the work directory's dashboards/ (never a path)",
    )
    provenance: dict[str, Any] | None = Field(None, description="written by export; ignored by launch")

    @model_validator(mode="after")
    def _best_epoch_defaults(self) -> StudySpec:
        """A pruned study tests and certifies each trial's best epoch, the epoch being picked by
        the objective when it is reported every epoch (unless the file says otherwise)."""
        ev, updates = self.evaluation, {}
        if self.pruning.enabled and "final_model" not in ev.model_fields_set:
            updates["final_model"] = "best"
        objective = self.objectives[0]
        if (
            "best_metric" not in ev.model_fields_set
            and len(self.objectives) == 1
            and per_epoch_metric(objective.metric)
        ):
            updates.update(best_metric=objective.metric, best_mode=objective.mode)
        if updates:
            self.evaluation = ev.model_copy(update=updates)
        return self

    @property
    def method_entries(self) -> list[MethodEntry]:
        return self.methods if self.methods is not None else [self.method]  # type: ignore[list-item]

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment: ``tracking.experiment``, else the study's name."""
        return self.tracking.experiment or self.name

    def tracking_uri(self, workdir: Workdir, override: str | None = None) -> str:
        """A command-line override, else ``tracking.tracking_uri``, else the work directory's sqlite
        store. A file's sqlite database must lie inside the work directory (``SpecError`` otherwise)."""
        uri = override or self.tracking.tracking_uri
        if not uri:
            return workdir.tracking_uri
        if override or tracking_scheme(uri) != "sqlite":
            return uri
        try:
            return confined_sqlite_uri(uri, workdir.root)
        except ValueError as exc:
            raise SpecError(f"study {self.name}", "tracking.tracking_uri", uri, str(exc)) from None

    @property
    def threads(self) -> int:
        return max(1, int(self.resources.cpu))

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def shared_search(self) -> list[tuple[str, dict[str, Any]]]:
        """(section, search) of the sections every trial searches, in the order the space samples
        them: model, training, dataset."""
        return [("model", self.model.search), ("training", self.training.search), ("dataset", self.dataset.search)]

    def searched_sections(self) -> list[tuple[str, dict[str, Any]]]:
        """(search-space prefix, search) of every section: each method entry (by its key), then the
        shared ones."""
        return [(m.key, m.search) for m in self.method_entries] + self.shared_search()

    def is_fixed(self) -> bool:
        """True when there is nothing to search: one method, no ``search`` entries."""
        return len(self.method_entries) == 1 and not any(search for _, search in self.searched_sections())

    def trial_config(self) -> TrialConfig:
        """The trial of a fixed study (see ``space.resolve`` for a searched one)."""
        if not self.is_fixed():
            raise ValueError("the study still searches hyperparameters; resolve a trial first")
        m = self.method_entries[0]
        return TrialConfig(
            dataset=DatasetConfig(**self.dataset.model_dump(exclude={"search"})),
            model=ComponentConfig(name=self.model.name, params=self.model.params),
            method=ComponentConfig(name=m.name, params=m.params),
            training=TrainingConfig(**self.training.model_dump(exclude={"search"})),
            evaluation=self.evaluation,
            seed=self.seed,
            device=self.device,
            threads=self.threads,
            checkpoint=self.checkpoint,
        )

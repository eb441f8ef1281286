"""Study files: the YAML schema, its validation, and one-line errors that name the field.

A study file fixes some hyperparameters (``params``) and searches others (``search``) in each
section that has typed parameters: ``dataset`` (its options), ``model``, every entry of
``methods`` and ``training``. Searched names are checked against the component's own pydantic
model, and so are the bounds of each range, so a study that validates cannot propose a trial
that its components reject.

An exported best configuration is a study file too (every value fixed, ``provenance`` filled in);
a file may hold several YAML documents, one study each.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from certstudy.certify import CERTIFIERS
from certstudy.data import DATASETS
from certstudy.errors import SpecError
from certstudy.methods import METHODS
from certstudy.metric_names import (
    CERTIFICATION_METRIC,
    END_ONLY_METRIC,
    EPOCH_METRICS,
    certificate_metric_names,
    per_epoch_metric,
)
from certstudy.models import MODELS
from certstudy.registry import Registry
from certstudy.safe_yaml import load_all, load_file, read_text
from certstudy.schema import DiscriminatedSchema, Schema
from certstudy.study.certifiable import check_certifiable
from certstudy.study.pruning import PruningConfig
from certstudy.study.store_urls import is_sqlite, sqlite_path
from certstudy.trial.build import certifier_params
from certstudy.trial.config import (
    MAX_SEED,
    CheckpointPolicy,
    ComponentConfig,
    DatasetConfig,
    EvaluationConfig,
    TrainingConfig,
    TrialConfig,
)
from certstudy.url_secrets import redacted, secret_parts
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


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql")
"""MLflow tracking backends ``--tracking-uri`` may name (``postgresql+psycopg2://`` counts as postgresql)."""

FILE_TRACKING_SCHEMES = ("http", "https", "sqlite")
"""What a study file may name: a server, or a sqlite database inside the work directory. Any other
store is the user's choice on the command line (``--tracking-uri``), never a file's."""

LAYOUT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,99}$"
"""A dashboard layout's name: a file stem, so a study file cannot point at a path."""


OPTUNA_STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")
"""Optuna RDB storages ``launch --optuna-storage`` may name (SQLAlchemy URLs; default: sqlite in the
study's folder)."""


def tracking_scheme(uri: str) -> str:
    """``postgresql+psycopg2://...`` -> ``postgresql``."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower()


def shown_uri(uri: str) -> str:
    """``uri`` with any password, secret query value or fragment replaced by ``***``: what an error
    line may print (``certstudy/url_secrets.py``)."""
    return redacted(uri)


def refuse_password(uri: str) -> None:
    """A store's URI is recorded with the study (Optuna attributes, Ray's saved searcher, MLflow
    tags) and printed in its commands, so it must not carry a password in any syntax (userinfo,
    query, fragment): the database reads it from a password file instead (PostgreSQL: ``~/.pgpass``
    or ``$PGPASSFILE``; MLflow servers: ``$MLFLOW_TRACKING_PASSWORD``)."""
    found = secret_parts(uri)
    if found:
        raise ValueError(
            f"carries a secret ({', '.join(found)}) that the study's records would keep; put it in a password file "
            f"(PostgreSQL: ~/.pgpass or $PGPASSFILE; an MLflow server: $MLFLOW_TRACKING_PASSWORD)"
        )


def check_optuna_storage(uri: str) -> str:
    """An Optuna RDB storage URL (sqlite, PostgreSQL, MySQL) without a password."""
    if "://" not in uri:
        raise ValueError("must be a database URL (sqlite:///PATH, postgresql://USER@HOST:PORT/DB, mysql://...)")
    scheme = tracking_scheme(uri)
    if scheme not in OPTUNA_STORAGE_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; one of {', '.join(OPTUNA_STORAGE_SCHEMES)}")
    refuse_password(uri)
    refuse_in_memory(uri)
    return uri


def refuse_in_memory(uri: str) -> None:
    """An in-memory sqlite store keeps nothing past the process (MLflow would "succeed" and lose every
    record), so only a database file is a store."""
    if is_sqlite(uri) and sqlite_path(uri) is None:
        raise ValueError("an in-memory sqlite database keeps nothing; name a file: sqlite:///PATH")


def check_tracking_uri(uri: str, schemes: tuple[str, ...] = TRACKING_SCHEMES) -> str:
    """A tracking URI MLflow 3 can use (no file store) whose scheme is one of ``schemes``, without a
    password."""
    if uri.startswith("file:") or "://" not in uri:
        raise ValueError(
            "must be a database or server URI (sqlite:///..., postgresql://..., http://...); MLflow 3 file stores "
            "are not supported"
        )
    refuse_password(uri)
    scheme = tracking_scheme(uri)
    if scheme not in TRACKING_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; one of {', '.join(TRACKING_SCHEMES)}")
    if scheme not in schemes:
        raise ValueError(
            f"a study file may name an http(s):// server or a sqlite:/// database inside the work directory; "
            f"give a {scheme} store with --tracking-uri"
        )
    if schemes != FILE_TRACKING_SCHEMES:  # a study file's sqlite path is confined to the work directory instead
        refuse_in_memory(uri)
    return uri


def confined_sqlite_uri(uri: str, root: Path) -> str:
    """A study file's ``sqlite:///PATH`` as an absolute URI, PATH taken relative to the work directory
    ``root`` and required to stay inside it (raises ``ValueError`` otherwise)."""
    path = uri.split("://", 1)[1]
    path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db -> rel.db; sqlite:////abs -> /abs
    target = (root / path).resolve()
    if not target.is_relative_to(root.resolve()) or target == root.resolve():
        raise ValueError(f"the database must be inside the work directory {root}; give others with --tracking-uri")
    return f"sqlite:///{target}"


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


# --- loading and errors ---------------------------------------------------------------------


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at ``loc`` inside pydantic ``model`` (best effort, for messages)."""
    for part in loc:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _lookup(data: Any, loc: Iterable[Any]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return data


def _first_error(
    source: str, exc: ValidationError, data: Any, prefix: tuple[Any, ...] = (), model: Any = None
) -> SpecError:
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if p not in ("float", "int", "categorical"))
    full = prefix + loc
    if err["type"] == "missing":
        return SpecError(source, _path(full), "<missing>", "this field is required")
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1]) if model is not None else []
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return SpecError(source, _path(full), loc[-1], f"unknown key{hint}")
    msg = err["msg"]
    msg = msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg
    value = err.get("input", _lookup(data, loc))
    if not loc and isinstance(value, dict):
        value = "<section>"
    return SpecError(source, _path(full), value, msg[0].lower() + msg[1:] if msg else "invalid")


def _check_component(
    source: str,
    path: str,
    registry: Registry[Any],
    name: str,
    fixed: dict[str, Any],
    search: dict[str, Any],
    fixed_key: str = "params",
) -> None:
    """A registered component's name, and its fixed and searched params against its ``Params``
    (a dataset's are given under ``options``)."""
    if name not in registry:
        raise SpecError(source, f"{path}.name", name, f"known {registry.kind}s: {', '.join(registry.names())}")
    _check_params(source, path, registry.get(name).Params, fixed, search, fixed_key=fixed_key)


def _check_params(
    source: str, path: str, params_model: type[BaseModel], fixed: dict[str, Any], search: dict[str, Any], fixed_key: str
) -> None:
    try:
        params_model(**fixed)
    except ValidationError as exc:
        raise _first_error(
            source, exc, fixed, (path, fixed_key) if fixed_key else (path,), model=params_model
        ) from None
    names = param_names(params_model)
    for key, dist in search.items():
        if key not in names:
            raise SpecError(
                source, f"{path}.search.{key}", key, f"not a parameter of this section; parameters: {', '.join(names)}"
            )
        if key in fixed:
            raise SpecError(
                source,
                f"{path}.search.{key}",
                key,
                f"is also fixed in {path}.{fixed_key}.{key}; fix it or search it, not both",
            )
        for probe in dist.probes():
            try:
                params_model(**{**fixed, key: probe})
            except ValidationError as exc:
                msg = exc.errors(include_url=False)[0]["msg"]
                raise SpecError(source, f"{path}.search.{key}", probe, f"outside what {key} allows ({msg})") from None


def param_names(params_model: type[BaseModel]) -> list[str]:
    """The names a study file uses for a params model's fields (its alias where it has one, e.g. ``lambda``),
    its own fields before those every model of its kind inherits (such as ``normalize``)."""
    inherited = {
        name
        for base in params_model.__mro__[1:]
        if isinstance(base, type) and issubclass(base, BaseModel)
        for name in base.model_fields
    }
    fields = params_model.model_fields.items()
    ordered = [(n, f) for n, f in fields if n not in inherited] + [(n, f) for n, f in fields if n in inherited]
    return [f.alias or name for name, f in ordered]


def _probe_params(entry: MethodEntry) -> tuple[Any, Any]:
    """The method's class and params with each searched value at its first probe (valid by ``_check_params``)."""
    method_cls = METHODS.get(entry.name)
    return method_cls, method_cls.Params(**{**entry.params, **{k: d.probes()[0] for k, d in entry.search.items()}})


def certificates_of(spec: StudySpec, source: str = "study") -> list[tuple[str, str]]:
    """(certificate, norm) of every configured certifier, for the metric names a study will report.

    Checks each certifier's params as every method of the study would complete them (e.g. sigma
    from the training method), raising ``SpecError`` with the field path."""
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(spec.evaluation.certifiers):
        path = f"evaluation.certifiers[{i}]"
        if entry.name not in CERTIFIERS:
            raise SpecError(source, f"{path}.name", entry.name, f"known certifiers: {', '.join(CERTIFIERS.names())}")
        cls = CERTIFIERS.get(entry.name)
        for m in spec.method_entries:
            method_cls, mparams = _probe_params(m)
            try:
                params = certifier_params(cls, entry.name, entry.params, method_cls, mparams)
                cls.check(params)
            except ValidationError as exc:
                raise _first_error(source, exc, entry.params, (path, "params"), model=cls.Params) from None
            except ValueError as exc:
                raise SpecError(source, f"{path}.params", entry.params, f"{exc} (method {m.key})") from None
            for name, norm in cls.certificates(params):
                if seen.setdefault(name, i) != i:
                    raise SpecError(
                        source,
                        f"{path}.name",
                        entry.name,
                        f"certificate {name!r} is already issued by evaluation.certifiers[{seen[name]}]",
                    )
                if (name, norm) not in out:
                    out.append((name, norm))
    return out


END_ONLY_HINT = (
    "AutoAttack accuracy and the certification gap are measured on test points at the end only (there is "
    "no val variant); steer with a val/ metric"
)


def epoch_metrics_of(spec: StudySpec) -> frozenset[str]:
    """Every metric a trial of ``spec`` reports after each epoch: the loop's own and its methods'."""
    names = set(EPOCH_METRICS)
    for entry in spec.method_entries:
        names |= METHODS.get(entry.name).epoch_metric_names
    return frozenset(names)


def _unknown_epoch_metric(metric: str, produced: frozenset[str]) -> str:
    shown = ", ".join(m for m in sorted(produced) if not m.startswith("train/") or m in EPOCH_METRICS)
    return f"not a metric this study reports every epoch; one of {shown} (or a method's train/ metric)"


def _check_end_only(source: str, spec: StudySpec) -> None:
    """A per-epoch role (best epoch, overfitting rule) needs a metric the study reports every epoch:
    not one that exists only at the end, and not one nothing reports."""
    ev = spec.evaluation
    named = [("evaluation.best_metric", ev.best_metric)]
    rule = spec.pruning.overfitting
    if rule is not None:
        named += [("pruning.overfitting.metric", rule.metric), ("pruning.overfitting.gap_metric", rule.gap_metric)]
    produced = epoch_metrics_of(spec)
    for where, metric in named:
        if END_ONLY_METRIC.match(metric):
            raise SpecError(source, where, metric, END_ONLY_HINT)
        if metric not in produced:
            raise SpecError(source, where, metric, _unknown_epoch_metric(metric, produced))


def _check_autoattack(source: str, spec: StudySpec) -> None:
    """AutoAttack (and the APGD audit) attack the trained classifier in the [0, 1] image box."""
    ev = spec.evaluation
    dataset = DATASETS.get(spec.dataset.name)
    shape, _ = dataset.shape(dataset.Params(**spec.dataset.options))
    if ev.audit.attack == "apgd" and len(shape) != 3:
        raise SpecError(
            source,
            "evaluation.audit.attack",
            "apgd",
            f"APGD assumes images in [0, 1]; dataset {spec.dataset.name!r} has inputs of shape {shape}; use pgd",
        )
    if ev.autoattack is None:
        return
    if len(shape) != 3:
        raise SpecError(
            source,
            "evaluation.autoattack",
            spec.dataset.name,
            f"AutoAttack assumes images in [0, 1]; dataset {spec.dataset.name!r} has inputs of shape {shape}",
        )
    for m in spec.method_entries:
        method_cls, _ = _probe_params(m)
        if not method_cls.model_is_classifier:
            raise SpecError(
                source,
                "evaluation.autoattack",
                m.key,
                f"method {m.key!r} trains a base classifier, not the classifier it certifies; AutoAttack would "
                f"measure the wrong model (see README: evaluating smoothed classifiers)",
            )


def _check_grid(source: str, spec: StudySpec) -> None:
    """A grid needs a fixed, finite space: categorical parameters, none of them method-specific
    when the study lists several methods."""
    if spec.search.sampler != "grid":
        return
    entries = spec.method_entries
    size = len(entries)
    key = "methods" if spec.methods is not None else "method"
    sections = [(f"{key}[{i}]" if spec.methods is not None else key, m.search) for i, m in enumerate(entries)]
    sections += spec.shared_search()
    for where, search in sections:
        for name, dist in search.items():
            if not isinstance(dist, Categorical):
                raise SpecError(
                    source,
                    f"{where}.search.{name}.type",
                    dist.type,
                    "the grid sampler takes categorical parameters only (list the values to try)",
                )
            if where.startswith("method") and len(entries) > 1:
                raise SpecError(
                    source,
                    f"{where}.search.{name}",
                    name,
                    "the grid sampler needs one space for every trial; method-specific parameters of one of several "
                    "methods are conditional",
                )
            size *= len(dist.choices)
    if spec.search.num_trials > size:
        raise SpecError(
            source,
            "search.num_trials",
            spec.search.num_trials,
            f"the grid has {size} points; ask for at most that many trials",
        )


def _check_augment(source: str, spec: StudySpec) -> None:
    augment = spec.dataset.augment
    if not augment.enabled:
        return
    dataset = DATASETS.get(spec.dataset.name)
    shape, _ = dataset.shape(dataset.Params(**spec.dataset.options))
    if len(shape) != 3:
        raise SpecError(
            source,
            "dataset.augment",
            augment.model_dump(),
            f"dataset {spec.dataset.name!r} is not images (input shape {shape}); crop and flip need (C, H, W) inputs",
        )
    if augment.flip and not dataset.flip_keeps_labels:
        raise SpecError(
            source,
            "dataset.augment.flip",
            True,
            f"a horizontal flip changes {spec.dataset.name!r} labels (a mirrored digit is another symbol or none); "
            f"use crop only",
        )


def _check_device(source: str, spec: StudySpec) -> None:
    """A trial sees only the GPUs Ray assigns it (``resources.gpu`` of them), numbered from 0, so
    ``cuda:N`` needs at least N + 1; preflight then checks that some node has that many."""
    if spec.device.startswith("cuda:"):
        index = int(spec.device.split(":")[1])
        if spec.resources.gpu < index + 1:
            raise SpecError(
                source,
                "device",
                spec.device,
                f"a trial sees only the {spec.resources.gpu:g} GPU(s) of resources.gpu, numbered from 0; give "
                f"resources.gpu >= {index + 1}, or device cuda / auto",
            )


def _check_attack(source: str, spec: StudySpec) -> None:
    if not spec.evaluation.attack.at_training_radius:
        return
    for m in spec.method_entries:
        method_cls, params = _probe_params(m)
        if method_cls.threat_model(params) is None:
            raise SpecError(
                source,
                "evaluation.attack.at_training_radius",
                True,
                f"method {m.key!r} trains against no radius; attack at a fixed evaluation.attack.eps instead",
            )


def _check_pruning(source: str, spec: StudySpec) -> None:
    if spec.pruning.pruner.name == "none":
        return
    if spec.multi_objective:
        raise SpecError(
            source,
            "pruning.pruner.name",
            spec.pruning.pruner.name,
            "Optuna's pruners cannot prune multi-objective studies; use pruning.overfitting (it works with any "
            "objectives) or one objective",
        )
    metric = spec.objectives[0].metric
    if not per_epoch_metric(metric):
        raise SpecError(
            source,
            "pruning.pruner.name",
            spec.pruning.pruner.name,
            f"a pruner needs an objective reported every epoch, and {metric} is measured only at the end; use a "
            f"per-epoch objective or pruning.overfitting",
        )


def _check_objectives(source: str, spec: StudySpec, certificates: list[tuple[str, str]]) -> None:
    certified = set(certificate_metric_names("val", certificates, spec.evaluation.radii))
    for i, obj in enumerate(spec.objectives):
        where = f"objectives[{i}].metric"
        if obj.metric.startswith("test/"):
            raise SpecError(
                source,
                where,
                obj.metric,
                "test metrics cannot steer the search (that would tune on the test split); use a val/ metric",
            )
        if END_ONLY_METRIC.match(obj.metric):
            raise SpecError(source, where, obj.metric, END_ONLY_HINT)
        if CERTIFICATION_METRIC.match(obj.metric):
            if not spec.evaluation.certify_val_subset:
                raise SpecError(
                    source,
                    where,
                    obj.metric,
                    "certified val metrics need evaluation.certify_val_subset > 0 (val points certified at the end)",
                )
            if obj.metric not in certified:
                raise SpecError(
                    source,
                    where,
                    obj.metric,
                    f"not reported by the configured certifiers and radii; e.g. "
                    f"{', '.join(sorted(certified)[:4]) or 'none (no certifiers)'}",
                )
        elif obj.metric not in epoch_metrics_of(spec):
            raise SpecError(
                source,
                where,
                obj.metric,
                f"objectives are per-epoch metrics this study reports, e.g. "
                f"{', '.join(m for m in EPOCH_METRICS if m.startswith('val/'))}, or certified val metrics",
            )


def validate_spec(data: Any, source: str) -> StudySpec:
    """Parses one study document; raises ``SpecError`` with the first problem, path included."""
    if not isinstance(data, dict):
        raise SpecError(source, "", type(data).__name__, "a study file must be a YAML mapping")
    if ("method" in data) == ("methods" in data):
        both = "method" in data
        raise SpecError(
            source,
            "methods" if both else "method",
            "<both given>" if both else "<missing>",
            "give exactly one of 'method' (one method) or 'methods' (a list)",
        )
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise _first_error(source, exc, data, model=StudySpec) from None
    _check_component(
        source, "dataset", DATASETS, spec.dataset.name, spec.dataset.options, spec.dataset.search, "options"
    )
    _check_component(source, "model", MODELS, spec.model.name, spec.model.params, spec.model.search)
    entries = spec.method_entries
    key = "methods" if spec.methods is not None else "method"
    for i, m in enumerate(entries):
        _check_component(
            source, f"{key}[{i}]" if spec.methods is not None else key, METHODS, m.name, m.params, m.search
        )
    seen: set[str] = set()
    for i, m in enumerate(entries):
        if m.key in seen:
            raise SpecError(
                source,
                f"methods[{i}].label",
                m.label,
                f"method {m.key!r} is listed twice; give each entry a distinct label",
            )
        seen.add(m.key)
    training_fixed = spec.training.model_dump(exclude={"search"})
    for k in spec.training.search:
        if k in spec.training.model_fields_set:
            raise SpecError(
                source, f"training.search.{k}", k, f"is also fixed in training.{k}; fix it or search it, not both"
            )
        training_fixed.pop(k, None)
    _check_params(source, "training", TrainingConfig, training_fixed, spec.training.search, fixed_key="")
    _check_objectives(source, spec, certificates_of(spec, source))
    check_certifiable(spec, source, [_probe_params(m) for m in spec.method_entries])
    if len({o.metric for o in spec.objectives}) != len(spec.objectives):
        raise SpecError(source, "objectives", [o.metric for o in spec.objectives], "each metric may appear once")
    _check_start_points(source, spec)
    _check_pruning(source, spec)
    _check_attack(source, spec)
    _check_device(source, spec)
    _check_end_only(source, spec)
    _check_autoattack(source, spec)
    _check_grid(source, spec)
    _check_augment(source, spec)
    if spec.is_fixed():
        try:
            spec.trial_config()
        except ValidationError as exc:
            raise _first_error(source, exc, data) from None
    return spec


def space_names(spec: StudySpec) -> dict[str, Any]:
    """Every search-space parameter name (see study/space.py) with its distribution."""
    names: dict[str, Any] = {}
    entries = spec.method_entries
    if len(entries) > 1:
        names["method"] = Categorical(type="categorical", choices=[m.key for m in entries])
    for m in entries:
        names.update({f"{m.key}.{k}": d for k, d in m.search.items()})
    for section, search in spec.shared_search():
        names.update({f"{section}.{k}": d for k, d in search.items()})
    return names


def _inside(dist: Any, value: Any) -> bool:
    if isinstance(dist, Categorical):
        return value in dist.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(dist, IntRange) and value != int(value):
        return False
    return dist.low <= value <= dist.high


def _check_start_points(source: str, spec: StudySpec) -> None:
    names = space_names(spec)
    for i, point in enumerate(spec.search.start_points):
        for key, value in point.items():
            where = f"search.start_points[{i}].{key}"
            if key not in names:
                raise SpecError(
                    source, where, key, f"not a search-space parameter; parameters: {', '.join(names) or 'none'}"
                )
            if not _inside(names[key], value):
                raise SpecError(source, where, value, f"outside the searched range of {key}")
    if len(spec.search.start_points) > spec.search.num_trials:
        raise SpecError(
            source,
            "search.start_points",
            len(spec.search.start_points),
            f"more start points than num_trials ({spec.search.num_trials})",
        )


def apply_overrides(data: Any, overrides: dict[str, Any]) -> Any:
    """``data`` with each dotted key of ``overrides`` (e.g. ``search.num_trials``) set, so a command
    line override is validated like the file (grid size, start points, bounds)."""
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break  # a malformed section: validation names it
        else:
            node[leaf] = value
    return data


_DOTTED_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _check_dotted(source: str, key: object) -> str:
    if not isinstance(key, str) or not _DOTTED_KEY.match(key):
        raise SpecError(source, "key", key, "keys are dotted field names, e.g. training.epochs")
    return key


def read_overrides(path: str | Path) -> dict[str, Any]:
    """An override file: one YAML mapping of dotted keys to the values that replace what the study
    file holds there (``training.epochs: 10``, or ``methods: [...]`` for a whole section). This is
    how a study ships a reduced budget beside its published one (``trials/mnist/*.cpu.yaml``)."""
    source = str(path)
    docs = load_file(path, "override file")
    if len(docs) != 1 or not isinstance(docs[0], dict) or not docs[0]:
        shown = type(docs[0]).__name__ if len(docs) == 1 else f"{len(docs)} documents"
        raise SpecError(source, "", shown, "an override file is a non-empty mapping of dotted keys")
    return {_check_dotted(source, k): v for k, v in docs[0].items()}


def parse_set(item: str) -> dict[str, Any]:
    """One ``--set KEY=VALUE``: the value is read as YAML (``10``, ``true``, ``[0.1, 0.3]``)."""
    key, sep, text = item.partition("=")
    if not sep:
        raise SpecError("--set", "", item, "expected KEY=VALUE, e.g. training.epochs=10")
    try:
        values = load_all(text, "--set") if text else [""]
    except SpecError:
        raise SpecError("--set", key, text, "the value is not valid YAML") from None
    value = values[0] if values else None
    return {_check_dotted("--set", key.strip()): value}


def load_documents(path: str | Path, overrides: dict[str, Any] | None = None) -> list[StudySpec]:
    """All study documents in a YAML file (an export may hold several), with command-line
    ``overrides`` applied before validation. The file is read by ``safe_yaml``: duplicate keys,
    alias bombs, deep nesting, non-UTF-8 bytes, huge files and non-regular files are refused."""
    path = Path(path)
    source = str(path) + (f" (with {', '.join(overrides)} overridden)" if overrides else "")
    docs = load_all(read_text(path, "study file"), source)
    if not docs:
        raise SpecError(source, "", "<empty>", "the file holds no study")
    docs = [apply_overrides(d, overrides) for d in docs] if overrides else docs
    return [validate_spec(d, source if len(docs) == 1 else f"{source} (document {i + 1})") for i, d in enumerate(docs)]


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """The single study in a file (the first, for a multi-document export)."""
    return load_documents(path, overrides)[0]


def dump_study(spec: StudySpec) -> dict[str, Any]:
    """A study as plain data for YAML: defaults included, so the file is complete on its own."""
    data = spec.model_dump(mode="json", exclude_none=False)
    for key in spec.training.search:  # a searched field has no fixed value to write
        data["training"].pop(key, None)
    if data.get("provenance") is None:
        data.pop("provenance", None)
    for key in ("method", "methods"):
        if data.get(key) is None:
            data.pop(key, None)
    sections = [data["dataset"], data["model"], data["training"]] + (
        [data["method"]] if "method" in data else data["methods"]
    )
    for section in sections:
        if not section.get("search"):
            section.pop("search", None)
        if section.get("label", "") is None:
            section.pop("label")
    return data

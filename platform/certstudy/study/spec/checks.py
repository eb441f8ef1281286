"""Checks that span fields or components, run after the schema has parsed a study: searched names
and ranges against each component's own typed parameters (so a study that validates cannot propose
a trial its components reject), objectives against the metrics the study produces, start points,
pruning, attacks, devices, grids and augmentation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from certstudy.certify import CERTIFIERS
from certstudy.data import DATASETS
from certstudy.errors import SpecError
from certstudy.methods import METHODS
from certstudy.metric_names import (
    CERTIFICATION_METRIC,
    END_ONLY_METRIC,
    EPOCH_METRICS,
    POISONED_FIT,
    certificate_metric_names,
    per_epoch_metric,
)
from certstudy.models import MODELS
from certstudy.registry import Registry
from certstudy.study.spec.certifiable import check_certifiable
from certstudy.study.spec.field_errors import first_error
from certstudy.study.spec.schema import Categorical, IntRange, MethodEntry, StudySpec
from certstudy.trial.build import certifier_params
from certstudy.trial.config import (
    TrainingConfig,
)


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
        raise first_error(source, exc, fixed, (path, fixed_key) if fixed_key else (path,), model=params_model) from None
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
                raise first_error(source, exc, entry.params, (path, "params"), model=cls.Params) from None
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
    if spec.dataset.poisoning.rate > 0:
        names.add(POISONED_FIT)
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


def space_names(spec: StudySpec) -> dict[str, Any]:
    """Every search-space parameter name (see study/spec/space.py) with its distribution."""
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


def check_study(source: str, spec: StudySpec) -> None:
    """The checks that span fields or components (each raises ``SpecError`` naming the field);
    run on a study the schema has parsed."""
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

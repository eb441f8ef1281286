"""The study's search space as an Optuna define-by-run function, and resolving a trial.

Parameter names are ``method`` (the chosen entry, when a study lists several), then
``<method label>.<param>`` for that entry's own searched parameters, so each method's space is
conditional on the method being chosen, and ``model.<p>``, ``training.<p>``, ``dataset.<p>`` for
the shared sections. ``resolve`` turns a dict of such values back into a fixed study file, which
is what a trial runs, what MLflow records and what export writes.
"""

from __future__ import annotations

from typing import Any, Protocol

from certstudy.study.spec.schema import Categorical, FloatRange, IntRange, StudySpec

METHOD_PARAM = "method"


class SuggestingTrial(Protocol):
    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def _suggest(trial: SuggestingTrial, name: str, dist: FloatRange | IntRange | Categorical) -> Any:
    if isinstance(dist, FloatRange):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntRange):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


class SearchSpace:
    """Define-by-run space: called on each asked Optuna trial (a module-level class, so Tune can pickle it)."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec

    def __call__(self, trial: SuggestingTrial) -> None:
        entries = {m.key: m for m in self.spec.method_entries}
        key = trial.suggest_categorical(METHOD_PARAM, list(entries)) if len(entries) > 1 else next(iter(entries))
        for name, dist in entries[key].search.items():
            _suggest(trial, f"{key}.{name}", dist)
        for section, search in self.spec.shared_search():
            for name, dist in search.items():
                _suggest(trial, f"{section}.{name}", dist)
        return None


def grid_points(spec: StudySpec) -> dict[str, list[Any]]:
    """The search space as Optuna's GridSampler takes it: every parameter name with its choices
    (``validate_spec`` has checked that each searched parameter is categorical and unconditional)."""
    grid: dict[str, list[Any]] = {}
    entries = spec.method_entries
    if len(entries) > 1:
        grid[METHOD_PARAM] = [m.key for m in entries]
    for m in entries:
        for name, dist in m.search.items():
            grid[f"{m.key}.{name}"] = list(dist.choices)  # type: ignore[union-attr]
    for section, search in spec.shared_search():
        for name, dist in search.items():
            grid[f"{section}.{name}"] = list(dist.choices)  # type: ignore[union-attr]
    return grid


def resolve(spec: StudySpec, values: dict[str, Any]) -> StudySpec:
    """The fixed study (one method, nothing searched) that a trial with ``values`` runs."""
    entries = {m.key: m for m in spec.method_entries}
    key = values.get(METHOD_PARAM, next(iter(entries)))
    entry = entries[key]

    def picked(prefix: str) -> dict[str, Any]:
        return {k[len(prefix) + 1 :]: v for k, v in values.items() if k.startswith(prefix + ".")}

    method = entry.model_copy(update={"params": {**entry.params, **picked(key)}, "search": {}})
    model = spec.model.model_copy(update={"params": {**spec.model.params, **picked("model")}, "search": {}})
    training = spec.training.model_copy(update={**picked("training"), "search": {}})
    dataset = spec.dataset.model_copy(update={"options": {**spec.dataset.options, **picked("dataset")}, "search": {}})
    search = spec.search.model_copy(update={"num_trials": 1, "max_concurrent": 1, "start_points": []})
    data = {
        **spec.model_dump(),
        "method": method.model_dump(),
        "methods": None,
        "model": model.model_dump(),
        "training": training.model_dump(),
        "dataset": dataset.model_dump(),
        "search": search.model_dump(),
    }
    return StudySpec.model_validate(data)

"""The best finished trial of a study for each value of one hyperparameter, as a markdown table.

For trade-off studies (e.g. certified accuracy against the smoothing noise level sigma) the
question is what each value of one parameter achieves at its best: trials are grouped by the
resolved parameter (an MLflow param such as ``method.params.sigma``), the best of each group is
chosen by a validation metric, and the table reports that trial's test metrics as recorded by the
study (one seed; no reruns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from certstudy.analysis.reruns import fmt_value
from certstudy.study.records.export import Candidate, finished_trials, rank, study_tracker
from certstudy.study.records.launched import study_spec
from certstudy.study.records.names import METHOD_LABEL_TAG
from certstudy.study.spec.checks import space_names
from certstudy.study.spec.schema import StudySpec
from certstudy.workdir import Workdir


@dataclass
class Group:
    value: str
    best: Candidate
    trials: int


def best_per_param(
    workdir: Workdir, study: str, param: str, metric: str, mode: str = "max"
) -> tuple[StudySpec, list[Group]]:
    spec = study_spec(workdir, study)
    _, candidates = finished_trials(study_tracker(workdir, spec), spec)
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        if param in c.run.data.params:
            groups.setdefault(c.run.data.params[param], []).append(c)
    out = []
    for value, members in groups.items():
        ranked = rank(members, for_value(metric, value), mode)
        if ranked:
            out.append(Group(value, ranked[0], len(members)))
    out.sort(key=lambda g: _as_number(g.value))
    return spec, out


def for_value(metric: str, value: str) -> str:
    """A metric name with ``{value}`` replaced by the group's value as it appears in metric names
    (``val/certified_acc_lipschitz_l2_r{value}`` -> ``..._r0.5`` for eps 0.5): a per-group criterion."""
    number = _as_number(value)
    return metric.replace("{value}", f"{number:g}" if isinstance(number, float) and math.isfinite(number) else value)


def _as_number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return math.inf


def searched_values(spec: StudySpec, c: Candidate, skip: str) -> str:
    """The trial's method label and the searched hyperparameters other than ``skip``, from its MLflow params."""
    label = c.run.data.tags.get(METHOD_LABEL_TAG, "")
    params = c.run.data.params
    prefixes = {
        label: "method.params.",
        "model": "model.params.",
        "training": "training.",
        "dataset": "dataset.options.",
    }
    shown = []
    for name in space_names(spec):
        section, _, key = name.partition(".")
        mlflow_key = prefixes[section] + key if key and section in prefixes else None
        if mlflow_key and mlflow_key != skip and mlflow_key in params:
            shown.append(f"{key}={fmt_value(params[mlflow_key])}")
    return f"{label}" + (f" ({', '.join(shown)})" if shown else "")


def markdown_table(
    spec: StudySpec, groups: list[Group], param: str, metric: str, columns: list[tuple[str, str]]
) -> str:
    """One row per value of ``param``; ``columns`` are (header, metric) pairs."""
    lines = [
        "| "
        + " | ".join(
            [param.rsplit(".", 1)[-1], "best trial (searched values)", "trials", metric] + [h for h, _ in columns]
        )
        + " |",
        "|" + "---|" * (4 + len(columns)),
    ]
    for g in groups:
        cells = [
            fmt_value(g.value),
            searched_values(spec, g.best, param),
            str(g.trials),
            f"{g.best.value(for_value(metric, g.value)):.3f}",
        ]
        cells += [_cell(m, g.best.value(for_value(m, g.value))) for _, m in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(metric: str, v: float) -> str:
    if math.isnan(v):
        return "–"
    return f"{v:.0f}" if metric.startswith("audit/") else f"{v:.3f}"  # audit metrics are counts

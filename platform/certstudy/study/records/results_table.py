"""The end-of-study table: the study's best trials as the stored records have them.

Read back from the Optuna storage and the MLflow runs (``status.read_records``) rather than from
this session's events, so a resumed study's table covers every trial of the study, including those
that ended before the resume. Columns: the objectives (a pruned trial's at its best epoch), test
clean accuracy, certified accuracy at the study's main radius for each certificate its trials
report, and the searched hyperparameters.
"""

from __future__ import annotations

import math
import re

from rich.table import Table

from certstudy.metric_names import radius_label
from certstudy.study.records.launched import LaunchedStudy
from certstudy.study.records.names import FINISHED, State, summary_metrics
from certstudy.study.records.status import read_records, state_name
from certstudy.study.spec.schema import StudySpec
from certstudy.study.spec.space import METHOD_PARAM
from certstudy.workdir import Workdir


def main_radius(spec: StudySpec) -> tuple[str, float] | None:
    """(norm, radius) a reader looks at first: the evaluation attack's, when the certified grid has
    it, else the grid's smallest positive radius; None without certifiers."""
    ev = spec.evaluation
    if not ev.certifiers:
        return None
    grid = {norm: sorted(r for r in radii if r > 0) for norm, radii in ev.radii.items()}
    if ev.attack.eps in grid.get(ev.attack.norm, []):
        return ev.attack.norm, ev.attack.eps
    for norm, radii in grid.items():
        if radii:
            return norm, radii[0]
    return None


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def results_table(workdir: Workdir, spec: StudySpec, top: int = 5) -> Table:
    """The ``top`` finished trials by the first objective, from the stored records."""
    records = read_records(workdir, LaunchedStudy.read(workdir, spec.name))
    objective = spec.objectives[0]
    rows = []
    for trial in records.trials:
        state = state_name(trial.state)
        run = records.runs.get(trial.number)
        if state not in FINISHED or run is None:
            continue
        metrics = summary_metrics(run.data.metrics)
        value = metrics.get(objective.metric, trial.values[0] if trial.values else math.nan)
        if math.isfinite(value):
            rows.append((value, trial, state, metrics, run.epochs))
    rows.sort(key=lambda row: row[0], reverse=objective.mode == "max")
    main = main_radius(spec)
    certificates: list[str] = []
    if main is not None:
        pattern = re.compile(rf"^test/certified_acc_(.+)_{main[0]}_{re.escape(radius_label(main[1]))}$")
        certificates = sorted({m.group(1) for *_, metrics, _ in rows for k in metrics if (m := pattern.match(k))})
    params = sorted({k for _, trial, *_ in rows[:top] for k in trial.params if k != METHOD_PARAM})
    title = f"top trials of {spec.name} by {objective.metric} ({objective.mode}), {len(rows)} finished"
    table = Table(title=title)
    for column in ("trial", "method", "epochs"):
        table.add_column(column)
    metric_columns = [o.metric for o in spec.objectives] + (
        ["test/clean_acc"] if "test/clean_acc" not in {o.metric for o in spec.objectives} else []
    )
    cert_columns = [f"test/certified_acc_{c}_{main[0]}_{radius_label(main[1])}" for c in certificates] if main else []
    for column in metric_columns:
        table.add_column(column, justify="right")
    for certificate in certificates:
        assert main is not None
        table.add_column(f"certified {certificate} {main[0]} r={main[1]:g}", justify="right")
    for column in params:
        table.add_column(column, justify="right")
    default_method = spec.method_entries[0].key
    for _, trial, state, metrics, epochs in rows[:top]:
        shown_epochs = str(epochs) + (" (pruned)" if state == State.PRUNED else "")
        table.add_row(
            f"{trial.number}",
            str(trial.params.get(METHOD_PARAM, default_method)),
            shown_epochs,
            *(f"{metrics[c]:.4f}" if c in metrics else "-" for c in metric_columns + cert_columns),
            *(_shown(trial.params[p]) if p in trial.params else "-" for p in params),
        )
    return table

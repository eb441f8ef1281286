"""Each panel type turns a study's data into plotly figures, or None when the study lacks the data
(a study without certifiers has no certified curves; a multi-objective study no importances)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import optuna
import plotly.graph_objects as go

from certstudy.dashboards.data import StudyData, TrialData
from certstudy.dashboards.layout import (
    CertificationGap,
    CertifiedCurves,
    Heatmap,
    Importances,
    LearningCurves,
    Panel,
    ParamEffects,
    Pareto,
    TopTable,
)
from certstudy.metric_names import autoattack_acc_name, cert_gap_name, certified_acc_name, robust_acc_name
from certstudy.study.records.names import State
from certstudy.study.spec.checks import certificates_of
from certstudy.study.spec.space import METHOD_PARAM

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _objective(data: StudyData, metric: str | None = None) -> tuple[str, str]:
    obj = data.spec.objectives[0]
    if metric is None or metric == obj.metric:
        return obj.metric, obj.mode
    return metric, "max"


def _ranked(trials: list[TrialData], metric: str, mode: str) -> list[TrialData]:
    usable = [t for t in trials if math.isfinite(t.value(metric))]
    return sorted(usable, key=lambda t: t.value(metric), reverse=mode == "max")


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _figure(title: str, x: str, y: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        height=420,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
    )
    return fig


def certified_curves(panel: CertifiedCurves, data: StudyData) -> list[go.Figure] | None:
    certificates = certificates_of(data.spec)
    if not certificates:
        return None
    metric, mode = _objective(data)
    figures = []
    for cert, norm in certificates:
        grid = sorted(data.spec.evaluation.radii.get(norm, []))
        fig = _figure(f"certified accuracy against {norm} radius: {cert}", f"{norm} radius", "test certified accuracy")
        methods = sorted({t.method for t in data.finished})
        for m_i, method in enumerate(methods):
            for rank, t in enumerate(
                _ranked([t for t in data.finished if t.method == method], metric, mode)[: panel.top]
            ):
                ys = [t.value(certified_acc_name("test", cert, norm, r)) for r in grid]
                if all(math.isnan(v) for v in ys):
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=grid,
                        y=ys,
                        mode="markers",  # measured at the grid radii only: nothing is known between them
                        name=f"{method} #{rank + 1} (trial {t.number})",
                        marker={"color": _color(m_i), "size": 10, "symbol": MARKERS[rank % len(MARKERS)]},
                    )
                )
        if fig.data:
            _fit_radius_axes(fig, grid)
            figures.append(fig)
    return figures or None


MARKERS = ("circle", "diamond", "square", "triangle-up", "x")


def _fit_radius_axes(fig: go.Figure, grid: list[float]) -> None:
    """Radius from 0 to a little past the largest measured one; accuracy from 0 to 1."""
    top = max(grid, default=1.0) or 1.0
    fig.update_xaxes(range=[-0.04 * top, 1.08 * top])
    fig.update_yaxes(range=[-0.02, 1.02])


def _fill(color: str) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},0.15)"


def certification_gap(panel: CertificationGap, data: StudyData) -> list[go.Figure] | None:
    """Per certificate in the attack's norm: for each of the top trials (by the first objective),
    certified accuracy and the empirical accuracy that bounds it (AutoAttack, else PGD at the grid
    radii), the band between them shaded; a trial whose gap is negative anywhere is marked ALARM."""
    ev = data.spec.evaluation
    norm = ev.attack.norm
    grid = sorted(r for r in ev.radii.get(norm, []) if r > 0)
    source, empirical = (
        ("autoattack", lambda r: autoattack_acc_name(norm, r))
        if ev.autoattack
        else ("pgd", lambda r: robust_acc_name(norm, r))
    )
    metric, mode = _objective(data)
    top = _ranked(data.finished, metric, mode)[: panel.top]
    figures = []
    for cert, cert_norm in certificates_of(data.spec):
        if cert_norm != norm:
            continue
        fig = _figure(
            f"certification gap: {cert} vs {'AutoAttack' if source == 'autoattack' else 'PGD'} ({norm})",
            f"{norm} radius",
            "test accuracy",
        )
        for i, t in enumerate(top):
            certified = [t.value(certified_acc_name("test", cert, norm, r)) for r in grid]
            attacked = [t.value(empirical(r)) for r in grid]
            if all(math.isnan(v) for v in certified + attacked):
                continue
            gaps = [t.value(cert_gap_name(source, cert, norm, r)) for r in grid]
            alarm = " ALARM: negative gap" if any(g < 0 for g in gaps if math.isfinite(g)) else ""
            name = f"{t.method} trial {t.number}"
            color = _color(i)
            fig.add_trace(
                go.Scatter(
                    x=grid,
                    y=attacked,
                    mode="markers",
                    name=f"{name}: {source}",
                    marker={"color": color, "symbol": "x", "size": 10},
                    legendgroup=name,
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=grid,
                    y=certified,
                    mode="markers",
                    name=f"{name}: certified{alarm}",
                    marker={"color": color, "symbol": "circle", "size": 10},
                    error_y={  # the gap: from the certified (lower) to the attacked (upper) accuracy
                        "type": "data",
                        "symmetric": False,
                        "array": [
                            max(0.0, a - c) if math.isfinite(a - c) else 0.0 for a, c in zip(attacked, certified)
                        ],
                        "arrayminus": [0.0] * len(grid),
                        "color": color,
                    },
                    legendgroup=name,
                )
            )
            if source == "autoattack":
                pgd = [t.value(robust_acc_name(norm, r)) for r in grid]
                if not all(math.isnan(v) for v in pgd):
                    fig.add_trace(
                        go.Scatter(
                            x=grid,
                            y=pgd,
                            mode="markers",
                            name=f"{name}: PGD",
                            marker={"color": color, "symbol": "triangle-up", "size": 7},
                            legendgroup=name,
                        )
                    )
        if fig.data:
            _fit_radius_axes(fig, grid)
            figures.append(fig)
    return figures or None


def _gap_bar(attacked: float, certified: float) -> float:
    gap = attacked - certified
    return max(0.0, gap) if math.isfinite(gap) else 0.0


def _default_certified(data: StudyData) -> str:
    for cert, norm in certificates_of(data.spec):
        radii = [r for r in data.spec.evaluation.radii.get(norm, []) if r > 0]
        if radii:
            return certified_acc_name("test", cert, norm, max(radii))
    return "test/robust_acc"


def pareto(panel: Pareto, data: StudyData) -> list[go.Figure] | None:
    y = panel.y or _default_certified(data)
    points = [t for t in data.finished if math.isfinite(t.value(panel.x)) and math.isfinite(t.value(y))]
    if not points:
        return None
    fig = _figure(f"{panel.x} against {y}", panel.x, y)
    for m_i, method in enumerate(sorted({t.method for t in points})):
        mine = [t for t in points if t.method == method]
        fig.add_trace(
            go.Scatter(
                x=[t.value(panel.x) for t in mine],
                y=[t.value(y) for t in mine],
                mode="markers",
                name=method,
                marker={"color": _color(m_i), "size": 9},
                text=[f"trial {t.number} ({t.state})" for t in mine],
            )
        )
    front = [
        t
        for t in points
        if not any(
            o.value(panel.x) >= t.value(panel.x)
            and o.value(y) >= t.value(y)
            and (o.value(panel.x) > t.value(panel.x) or o.value(y) > t.value(y))
            for o in points
        )
    ]
    front.sort(key=lambda t: t.value(panel.x))
    fig.add_trace(
        go.Scatter(
            x=[t.value(panel.x) for t in front],
            y=[t.value(y) for t in front],
            mode="lines",
            name="Pareto front",
            line={"color": "black", "dash": "dash"},
        )
    )
    return [fig]


def learning_curves(panel: LearningCurves, data: StudyData) -> list[go.Figure] | None:
    trials = [t for t in data.trials if any(m in t.series for m in panel.metrics)]
    if not trials:
        return None
    fig = _figure("learning curves (x: where a pruned trial stopped)", "epoch", " / ".join(panel.metrics))
    for i, t in enumerate(trials):
        for j, metric in enumerate(panel.metrics):
            points = t.series.get(metric)
            if points:
                fig.add_trace(
                    go.Scatter(
                        x=[s for s, _ in points],
                        y=[v for _, v in points],
                        mode="lines",
                        name=f"trial {t.number} {metric}",
                        legendgroup=f"t{t.number}",
                        line={"color": _color(i), "dash": "dot" if j else "solid"},
                        opacity=0.8,
                    )
                )
    pruned = [t for t in trials if t.prune_reason is not None and t.pruned_at is not None]
    if pruned:
        metric = panel.metrics[-1]
        xs, ys, texts = [], [], []
        for t in pruned:
            at = dict(t.series.get(metric, []))
            xs.append(t.pruned_at)
            ys.append(at.get(t.pruned_at, math.nan))
            texts.append(f"trial {t.number} pruned at epoch {t.pruned_at}: {t.prune_reason}")
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="pruned",
                marker={"symbol": "x", "size": 12, "color": "black"},
                text=texts,
                hoverinfo="text",
            )
        )
    return [fig]


def _param_values(trials: list[TrialData], name: str) -> list:
    return [t.params.get(name) for t in trials]


def param_effects(panel: ParamEffects, data: StudyData) -> list[go.Figure] | None:
    metric, _ = _objective(data, panel.metric)
    trials = [t for t in data.finished if math.isfinite(t.value(metric))]
    params = panel.params or data.searched
    log_searched = data.log_searched
    figures = []
    for name in params:
        mine = [t for t in trials if name in t.params]
        if not mine:
            continue
        fig = _figure(f"{metric} against {name}", name, metric)
        for m_i, method in enumerate(sorted({t.method for t in mine})):
            group = [t for t in mine if t.method == method]
            fig.add_trace(
                go.Scatter(
                    x=_param_values(group, name),
                    y=[t.value(metric) for t in group],
                    mode="markers",
                    name=method,
                    marker={
                        "color": _color(m_i),
                        "size": 9,
                        "symbol": ["circle" if t.state == State.COMPLETED else "x" for t in group],
                    },
                    text=[f"trial {t.number} ({t.state})" for t in group],
                )
            )
        if name in log_searched:
            fig.update_xaxes(type="log")
        figures.append(fig)
    return figures or None


def _cells(values: list, bins: int) -> tuple[list[str], Callable[[object], int]]:
    """Labels and an index function: one cell per distinct value when few, else quantile bins."""
    distinct = sorted({v for v in values}, key=lambda v: (isinstance(v, str), v))
    if len(distinct) <= bins or not all(isinstance(v, (int, float)) for v in distinct):
        return [f"{v:.3g}" if isinstance(v, float) else str(v) for v in distinct], lambda v: distinct.index(v)
    edges = np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, bins + 1))
    labels = [f"{edges[i]:.3g}-{edges[i + 1]:.3g}" for i in range(bins)]
    return labels, lambda v: int(min(bins - 1, max(0, np.searchsorted(edges, float(v), side="right") - 1)))


def heatmap(panel: Heatmap, data: StudyData) -> list[go.Figure] | None:
    metric, _ = _objective(data, panel.metric)
    names = [n for n in data.searched if n != "method"]
    x, y = panel.x or (names[0] if names else None), panel.y or (names[1] if len(names) > 1 else None)
    if x is None or y is None:
        return None
    trials = [t for t in data.finished if x in t.params and y in t.params and math.isfinite(t.value(metric))]
    if len(trials) < 2:
        return None
    xl, xi = _cells(_param_values(trials, x), panel.bins)
    yl, yi = _cells(_param_values(trials, y), panel.bins)
    sums = np.zeros((len(yl), len(xl)))
    counts = np.zeros_like(sums)
    for t in trials:
        sums[yi(t.params[y]), xi(t.params[x])] += t.value(metric)
        counts[yi(t.params[y]), xi(t.params[x])] += 1
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    fig = _figure(f"mean {metric} over {x} x {y}", x, y)
    fig.add_trace(
        go.Heatmap(
            x=xl,
            y=yl,
            z=mean.tolist(),
            colorscale="Viridis",
            colorbar={"title": metric},
            text=counts.astype(int).tolist(),
            hovertemplate="%{x}, %{y}: %{z:.4f} (%{text} trials)<extra></extra>",
        )
    )
    return [fig]


def importances(panel: Importances, data: StudyData) -> list[go.Figure] | None:
    if data.spec.multi_objective:
        return None
    complete = [t for t in data.optuna_study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or not data.searched:
        return None
    try:
        scores = optuna.importance.get_param_importances(data.optuna_study)
    except (RuntimeError, ValueError):
        return None
    if not scores:
        return None
    names = list(scores)[::-1]
    fig = _figure(
        f"parameter importances for {data.spec.objectives[0].metric} (Optuna, completed trials)",
        "importance",
        "parameter",
    )
    fig.add_trace(go.Bar(x=[scores[n] for n in names], y=names, orientation="h", name="importance"))
    return [fig]


def _param_text(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def top_table(panel: TopTable, data: StudyData) -> list[go.Figure] | None:
    metric, mode = _objective(data)
    ranked = _ranked(data.finished, metric, mode)[: panel.top]
    if not ranked:
        return None
    columns = [metric] + [m for m in panel.metrics if m != metric]
    params = [p for p in data.searched if p != METHOD_PARAM]
    header = ["rank", "trial", "method", "state"] + columns + params + ["export"]
    rows = [
        [i + 1, t.number, t.method, t.state + (f" at {t.pruned_at} ({t.prune_reason})" if t.prune_reason else "")]
        + [f"{t.value(c):.4f}" for c in columns]
        + [_param_text(t.params.get(p)) for p in params]
        + [f"certstudy export {data.spec.name} --trial {t.number}"]
        for i, t in enumerate(ranked)
    ]
    fig = go.Figure(
        go.Table(
            header={"values": header, "align": "left"},
            cells={"values": [list(col) for col in zip(*rows)], "align": "left"},
        )
    )
    fig.update_layout(
        title=f"top {len(ranked)} trials by {metric} ({mode})",
        height=140 + 40 * len(rows),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return [fig]


PANELS: dict[type[Panel], Callable[..., list[go.Figure] | None]] = {
    CertifiedCurves: certified_curves,
    CertificationGap: certification_gap,
    Pareto: pareto,
    LearningCurves: learning_curves,
    ParamEffects: param_effects,
    Heatmap: heatmap,
    Importances: importances,
    TopTable: top_table,
}

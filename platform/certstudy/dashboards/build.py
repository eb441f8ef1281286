"""``certstudy dashboard``: one self-contained HTML page per study, logged into its MLflow parent run.

The page inlines plotly's JavaScript once (it opens offline and inside the MLflow UI's artifact
viewer, no CDN); each panel is a section with ``data-panel`` (its type) and ``data-traces`` (the
number of traces drawn), which the browser test checks against what rendered.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path

import plotly.io as pio
from plotly.offline import get_plotlyjs

from certstudy.dashboards.data import StudyData, load_study_data
from certstudy.dashboards.layout import Layout, load_layout
from certstudy.dashboards.panels import PANELS
from certstudy.study.records.launched import study_spec
from certstudy.study.records.names import DASHBOARD_ARTIFACT
from certstudy.workdir import Workdir

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
header p { color: #555; margin: 4px 0; }
section.panel { border-top: 1px solid #ddd; padding-top: 8px; margin-top: 16px; }
section.panel h2 { font-size: 16px; margin: 4px 0; }
"""


@dataclass
class Built:
    path: Path
    panels: dict[str, int]  # section id -> traces drawn
    left_out: list[str]  # panel types with no data in this study


def render(data: StudyData, layout: Layout) -> tuple[str, dict[str, int], list[str]]:
    sections, drawn, left_out = [], {}, []
    for i, panel in enumerate(layout.panels):
        figures = PANELS[type(panel)](panel, data)
        if not figures:
            left_out.append(panel.type)
            continue
        for j, fig in enumerate(figures):
            sid = f"panel-{i}-{j}"
            drawn[sid] = len(fig.data)
            title = html.escape(panel.title or (fig.layout.title.text or panel.type))
            fig.update_layout(title=None, margin={"t": 20})  # the section's heading carries it
            div = pio.to_html(
                fig,
                full_html=False,
                include_plotlyjs=False,
                div_id=f"{sid}-plot",
                config={"displaylogo": False, "responsive": True},
            )
            sections.append(
                f'<section class="panel" id="{sid}" data-panel="{panel.type}" '
                f'data-traces="{len(fig.data)}"><h2>{title}</h2>{div}</section>'
            )
    spec = data.spec
    counts: dict[str, int] = {}
    for t in data.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    objectives = html.escape(", ".join(f"{o.metric} ({o.mode})" for o in spec.objectives))
    title = html.escape(layout.title.format(study=spec.name))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<header><h1>{title}</h1>
<p>{html.escape(spec.description)}</p>
<p>{len(data.trials)} of {spec.search.num_trials} trials: {html.escape(summary)}; objectives: {objectives}</p>
<p>MLflow parent run {html.escape(str(data.parent_run_id))}; built {time.strftime("%Y-%m-%d %H:%M:%S")}</p>
<script type="application/json" id="certstudy-panels">{json.dumps({"panels": drawn, "left_out": left_out})}</script>
</header>
{"".join(sections)}
</body></html>
"""
    return page, drawn, left_out


def build_dashboard(
    workdir: Workdir, study: str, *, layout: str | None = None, out: Path | None = None, log_to_mlflow: bool = True
) -> Built:
    spec = study_spec(workdir, study)
    chosen = load_layout(layout or spec.dashboard, workdir)
    data = load_study_data(workdir, spec)
    page, drawn, left_out = render(data, chosen)
    path = out or workdir.study_dir(spec.name) / DASHBOARD_ARTIFACT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(path)  # never a half-written page
    if log_to_mlflow and data.parent_run_id:
        data.stored.tracker.client.log_artifact(data.parent_run_id, str(path))
    return Built(path, drawn, left_out)

"""Seed reruns of a study's best configuration per method, and their markdown table.

A study's ranking rests on one seed; before a claim goes into a results table each method's best
trial is retrained with several seeds (the seed drives the data split, the poisoning draw, the
initialisation and the training randomness) and reported as mean +- standard deviation.
"""

from __future__ import annotations

import math
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from certstudy.study.records.export import finished_trials, rank, study_tracker
from certstudy.study.records.launched import study_spec
from certstudy.study.records.names import METHOD_LABEL_TAG, TRIAL_STUDY_ARTIFACT
from certstudy.study.spec.loading import validate_spec
from certstudy.study.spec.schema import StudySpec
from certstudy.workdir import Workdir

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass
class MethodResult:
    label: str
    trial_value: float
    spec: StudySpec
    searched: dict[str, Any]
    per_seed: list[dict[str, float]] = field(default_factory=list)

    def stat(self, metric: str) -> tuple[float, float]:
        values = [m[metric] for m in self.per_seed if metric in m]
        if not values:
            return math.nan, math.nan
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def best_per_method(workdir: Workdir, study: str, metric: str | None = None) -> tuple[StudySpec, list[MethodResult]]:
    """The best finished trial of each method (by ``metric``, default the first objective)."""
    spec = study_spec(workdir, study)
    objective = spec.objectives[0]
    metric = metric or objective.metric
    mode = next((o.mode for o in spec.objectives if o.metric == metric), "max")
    tracker = study_tracker(workdir, spec)
    _, candidates = finished_trials(tracker, spec)
    results = []
    for entry in spec.method_entries:
        mine = [c for c in candidates if c.run.data.tags.get(METHOD_LABEL_TAG) == entry.key]
        ranked = rank(mine, metric, mode)
        if not ranked:
            continue
        best = ranked[0]
        fixed = validate_spec(tracker.trial_study(best.run.info.run_id), TRIAL_STUDY_ARTIFACT)
        chosen = fixed.method_entries[0]
        searched = {
            **{f"method.{k}": chosen.params.get(k) for k in entry.search},
            **{f"model.{k}": fixed.model.params.get(k) for k in spec.model.search},
            **{f"training.{k}": getattr(fixed.training, k) for k in spec.training.search},
        }
        results.append(MethodResult(entry.key, best.value(metric), fixed, searched))
    return spec, results


def _run_one(spec_json: dict[str, Any], workdir: str) -> dict[str, float]:
    from certstudy.study.engine.single import run_fixed
    from certstudy.study.records.names import numeric_metrics

    spec = StudySpec.model_validate(spec_json)
    return numeric_metrics(run_fixed(spec, Workdir.resolve(workdir), track=False).metrics)


def rerun_seeds(results: list[MethodResult], seeds: list[int], workdir: Workdir, processes: int = 2) -> None:
    """Fills ``per_seed`` of every result; runs ``processes`` trainings at a time."""
    jobs = [(r, seed) for r in results for seed in seeds]
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_run_one, r.spec.model_copy(update={"seed": seed}).model_dump(mode="json"), str(workdir.root))
            for r, seed in jobs
        ]
        for (r, _), fut in zip(jobs, futures):
            r.per_seed.append(fut.result())


def markdown_table(spec: StudySpec, results: list[MethodResult], seeds: list[int], metrics: list[str]) -> str:
    lines = [
        f"Best trial per method of study `{spec.name}` (by `{spec.objectives[0].metric}`), retrained with seeds "
        f"{', '.join(map(str, seeds))}; mean ± std over seeds.",
        "",
        "| method | searched hyperparameters | study trial "
        + spec.objectives[0].metric
        + " | "
        + " | ".join(metrics)
        + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for r in results:
        hp = ", ".join(f"{k.split('.', 1)[1]}={fmt_value(v)}" for k, v in r.searched.items()) or "(none)"
        cells = []
        for m in metrics:
            mean, std = r.stat(m)
            cells.append("–" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
        lines.append(f"| {r.label} | {hp} | {r.trial_value:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fmt_value(value: Any) -> str:
    """A number to 3 significant digits; anything else as it is."""
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def write_section(path: Path, section: str, body: str) -> None:
    """Replaces (or appends) the block between this section's markers; other sections stay."""
    begin, end = f"<!-- begin: {section} -->", f"<!-- end: {section} -->"
    text = (
        path.read_text()
        if path.exists()
        else "# Results\n\nGenerated by the scripts named in each section; do not edit between the markers.\n"
    )
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)

"""``certstudy export``: the best trials of a study as re-runnable study files.

Reads the study's latest parent run in MLflow and its finished child runs, completed or pruned,
each at its best epoch where it ended on one (``best/`` metrics, see ``records.summary_metrics``).
Each exported entry is a complete study document (the trial's resolved configuration: every hyperparameter fixed) with a
``provenance`` block: the metrics it reached, its MLflow run id and its Optuna trial number.
``--top K`` ranks by one metric; ``--pareto`` keeps the trials no other trial beats on every
objective of the study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from certstudy.errors import CertstudyError, SpecError
from certstudy.safe_yaml import load_file
from certstudy.study.records.launched import LaunchedObjective, LaunchedStudy, study_spec
from certstudy.study.records.names import (
    BEST_EPOCH_KEY,
    EXPERIMENT_ATTR,
    FINISHED,
    OPTUNA_TAG,
    PARENT_ATTR,
    PROV_BEST_EPOCH,
    PROV_BY,
    PROV_METRICS,
    PROV_MODE,
    PROV_OBJECTIVES,
    PROV_OPTUNA_TRIAL,
    PROV_PARETO,
    PROV_RANK,
    PROV_RUN_ID,
    PROV_STUDY,
    PROV_TRIAL,
    PROVENANCE,
    PRUNE_REASON_ATTR,
    PRUNED_AT_ATTR,
    STATUS_TAG,
    TRIAL_STUDY_ARTIFACT,
    PruneDecision,
    summary_metrics,
)
from certstudy.study.records.stored_sqlite import latest_study_runs, local_artifact
from certstudy.study.spec.store_urls import sqlite_path
from certstudy.workdir import TRACKING_STORE, Workdir

if TYPE_CHECKING:
    from mlflow.entities import Run

    from certstudy.study.records.stored_sqlite import StoredRun
    from certstudy.study.records.tracking import Tracker
    from certstudy.study.spec.schema import Objective, StudySpec

TrialStudy = Callable[[str], dict[str, Any]]  # a finished trial's run id -> its trial_study.yaml


@dataclass
class Candidate:
    run: Run | StoredRun
    metrics: dict[str, float]

    def value(self, metric: str) -> float:
        return self.metrics.get(metric, math.nan)


def study_tracker(workdir: Workdir, spec: StudySpec, tracking_uri: str | None = None) -> Tracker:
    """The launched study's MLflow store (``stored.study_tracking_uri``), which must exist (reading
    it never creates one)."""
    from certstudy.study.records.stored import existing_store, study_tracking_uri
    from certstudy.study.records.tracking import Tracker

    return Tracker(existing_store(study_tracking_uri(workdir, spec, tracking_uri), "MLflow tracking store"))


def finished_trials(tracker: Tracker, spec: StudySpec) -> tuple[Run, list[Candidate]]:
    exp = tracker.client.get_experiment_by_name(spec.experiment_name)
    parent = tracker.latest_study_run(exp.experiment_id, spec.name) if exp else None
    if parent is None:
        raise CertstudyError(f"no MLflow runs for study {spec.name!r} at {tracker.tracking_uri}")
    return parent, _candidates(tracker.child_runs(exp.experiment_id, parent.info.run_id))


def _candidates(runs: Sequence[Any]) -> list[Candidate]:
    """The finished trials among a parent's child runs (completed or pruned), at their summary metrics."""
    return [
        Candidate(r, summary_metrics(r.data.metrics))
        for r in runs
        if r.info.status == "FINISHED" and r.data.tags.get(STATUS_TAG) in FINISHED
    ]


def _sqlite_trials(workdir: Workdir, study: LaunchedStudy) -> tuple[StoredRun, list[Candidate], TrialStudy] | None:
    """The latest parent run, its finished trials and their trial studies, read straight from a
    sqlite tracking store whose artifacts are local (``stored_sqlite``); None where that is not so
    (another store, or artifacts behind a server), and the caller goes through MLflow."""
    from certstudy.study.records.stored_sqlite import existing_store

    uri = workdir.recorded_store(study.name, TRACKING_STORE)
    path = sqlite_path(uri) if uri else None
    if path is None:
        return None
    existing_store(uri, "MLflow tracking store")  # type: ignore[arg-type]
    found = latest_study_runs(path, study.experiment, study.name)
    if found is None:
        raise CertstudyError(f"no MLflow runs for study {study.name!r} at {uri}")
    parent, children = found
    candidates = _candidates(children)
    files = {c.run.info.run_id: local_artifact(c.run, TRIAL_STUDY_ARTIFACT) for c in candidates}  # type: ignore[arg-type]
    if any(f is None for f in files.values()):
        return None

    def trial_study(run_id: str) -> dict[str, Any]:
        docs = load_file(files[run_id], "trial study artifact")  # type: ignore[arg-type]
        return docs[0] if docs else {}

    return parent, candidates, trial_study


def trial_number(c: Candidate) -> float:
    """The candidate's Optuna trial number (infinite where its run has none)."""
    number = c.run.data.tags.get(OPTUNA_TAG, "")
    return int(number) if number.isdigit() else math.inf


def rank(candidates: list[Candidate], metric: str, mode: str) -> list[Candidate]:
    """Best first by ``metric``; of equal values, the earlier trial first (the same order whichever
    store the runs were read from, in whatever order it returned them)."""
    usable = [c for c in candidates if math.isfinite(c.value(metric))]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(usable, key=lambda c: (sign * c.value(metric), trial_number(c)))


def pareto_front(candidates: list[Candidate], objectives: Sequence[Objective | LaunchedObjective]) -> list[Candidate]:
    """Candidates no other candidate matches or beats on every objective and beats on one."""

    def oriented(c: Candidate) -> list[float]:
        return [c.value(o.metric) if o.mode == "max" else -c.value(o.metric) for o in objectives]

    usable = [c for c in candidates if all(math.isfinite(v) for v in oriented(c))]
    front = []
    for c in usable:
        a = oriented(c)
        dominated = any(
            all(x >= y for x, y in zip(oriented(d), a)) and any(x > y for x, y in zip(oriented(d), a))
            for d in usable
            if d is not c
        )
        if not dominated:
            front.append(c)
    return rank(front, objectives[0].metric, objectives[0].mode)


def _entry(
    trial_study: TrialStudy, study: str, parent: Any, cand: Candidate, rank_: int, selection: dict[str, Any]
) -> dict[str, Any]:
    doc = trial_study(cand.run.info.run_id)
    doc["name"] = f"{study}-best-{rank_}"
    doc["description"] = f"rank {rank_} of study {study} by {selection[PROV_BY]}"
    optuna_number = cand.run.data.tags.get(OPTUNA_TAG)
    pruned = PruneDecision.from_tags(cand.run.data.tags)  # provenance keys spelled as the Optuna attrs
    doc[PROVENANCE] = {
        PROV_STUDY: study,
        PROV_RANK: rank_,
        **selection,
        PROV_RUN_ID: cand.run.info.run_id,
        PARENT_ATTR: parent.info.run_id,
        EXPERIMENT_ATTR: cand.run.info.experiment_id,
        PROV_OPTUNA_TRIAL: int(optuna_number) if optuna_number not in (None, "None") else None,
        **({PROV_BEST_EPOCH: int(cand.metrics[BEST_EPOCH_KEY])} if BEST_EPOCH_KEY in cand.metrics else {}),
        **({PRUNE_REASON_ATTR: pruned.reason, PRUNED_AT_ATTR: pruned.epoch} if pruned else {}),
        PROV_METRICS: {k: cand.metrics[k] for k in sorted(cand.metrics)},
    }
    return doc


def export(
    workdir: Workdir,
    study: str,
    *,
    metric: str | None = None,
    mode: str | None = None,
    top: int = 1,
    pareto: bool = False,
    trial: int | None = None,
    out: Path | None = None,
    tracking_uri: str | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    spec = LaunchedStudy.read(workdir, study)
    found = _sqlite_trials(workdir, spec) if tracking_uri is None else None
    if found is None:
        full = study_spec(workdir, study)
        tracker = study_tracker(workdir, full, tracking_uri)
        parent, candidates = finished_trials(tracker, full)
        trial_study: TrialStudy = tracker.trial_study
    else:
        parent, candidates, trial_study = found
    if not candidates:
        raise CertstudyError(f"study {study!r} has no completed trials to export")
    selection: dict[str, Any]
    if trial is not None:
        chosen = [c for c in candidates if c.run.data.tags.get(OPTUNA_TAG) == str(trial)]
        if not chosen:
            finished = sorted(int(n) for c in candidates if (n := c.run.data.tags.get(OPTUNA_TAG, "")).isdigit())
            raise SpecError(
                study, "--trial", trial, f"no finished trial of that number; finished: {', '.join(map(str, finished))}"
            )
        selection = {
            PROV_BY: metric or spec.objectives[0].metric,
            PROV_MODE: mode or spec.objectives[0].mode,
            PROV_TRIAL: trial,
        }
    elif pareto:
        if not spec.multi_objective:
            raise SpecError(
                study,
                "--pareto",
                [o.metric for o in spec.objectives],
                "a Pareto front needs a study with two or more objectives; use --metric/--top",
            )
        chosen = pareto_front(candidates, spec.objectives)
        selection = {PROV_BY: PROV_PARETO, PROV_OBJECTIVES: [o.model_dump() for o in spec.objectives]}
    else:
        objective = next((o for o in spec.objectives if o.metric == (metric or spec.objectives[0].metric)), None)
        metric = metric or spec.objectives[0].metric
        mode = mode or (objective.mode if objective else "max")
        known = sorted({k for c in candidates for k in c.metrics})
        if metric not in known:
            raise SpecError(study, "--metric", metric, f"not a metric of this study's runs; known: {', '.join(known)}")
        chosen = rank(candidates, metric, mode)[:top]
        selection = {PROV_BY: metric, PROV_MODE: mode}
    docs = [_entry(trial_study, spec.name, parent, c, i + 1, selection) for i, c in enumerate(chosen)]
    out = out or workdir.export_path(study)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(
            f"# best configurations of study {study} ({selection[PROV_BY]}); each document is a study file: certstudy "
            f"run {out.name} --index K\n"
        )
        yaml.safe_dump_all(docs, fh, sort_keys=False)
    tmp.replace(out)  # never leave a half-written export behind
    return out, docs

"""``certstudy launch``: a study file becomes Ray Tune trials proposed by Optuna, tracked in MLflow.

Order of work: validate (done by the caller) -> prepare the work directory -> MLflow experiment
and parent run -> Optuna study in sqlite -> Ray (local, or ``address``) -> ``Tuner.fit`` -> close
every run that is still open -> summary. Whatever happens during ``fit``, no MLflow run is left
RUNNING: the parent ends FINISHED, FAILED or KILLED, and so does every child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
import yaml
from rich.console import Console
from ray import tune

from certstudy.errors import CertstudyError
from certstudy.study.callbacks import MlflowTrialCallback, ProgressCallback
from certstudy.study.optuna_bridge import StudyScheduler, StudySearcher, make_sampler
from certstudy.study.preflight import PreflightError, alive_nodes, check_resources, check_storage, check_tracking
from certstudy.study.progress import Progress
from certstudy.study.results import OPTUNA_TRIAL_KEY, collapse
from certstudy.study.space import SearchSpace, grid_points
from certstudy.study.spec import StudySpec, dump_study, load_study
from certstudy.study.status import state_name
from certstudy.study.stop_board import open_board
from certstudy.study.stored import EXPERIMENT_ATTR, PARENT_ATTR, RAY_EXPERIMENT_ATTR, TRACKING_ATTR, StoredStudy
from certstudy.study.tracking import REASON_TAG, STATUS_TAG, Tracker
from certstudy.study.trainable import train_trial
from certstudy.workdir import Workdir

@dataclass
class StudyOutcome:
    name: str
    experiment_id: str
    parent_run_id: str
    counts: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False


def _prepare_study_dir(spec: StudySpec, workdir: Workdir, overwrite: bool, console: Console) -> Path:
    """A fresh study folder. Earlier results of a study of the same name are moved aside to
    ``<study>.prev-<time>`` (or deleted with ``overwrite``); their MLflow runs stay where they are."""
    study_dir = workdir.study_dir(spec.name)
    if study_dir.exists() and any(study_dir.iterdir()):
        if overwrite:
            shutil.rmtree(study_dir)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            kept = study_dir.with_name(f"{spec.name}.prev-{stamp}")
            n = 1
            while kept.exists():
                kept, n = study_dir.with_name(f"{spec.name}.prev-{stamp}-{n}"), n + 1
            study_dir.rename(kept)
            console.print(f"earlier results of study {spec.name} moved to {kept}", highlight=False)
    workdir.ensure(spec.name)
    workdir.study_file(spec.name).write_text(yaml.safe_dump(dump_study(spec), sort_keys=False))
    return study_dir


def _make_searcher(spec: StudySpec, workdir: Workdir) -> StudySearcher:
    metric: Any = [o.metric for o in spec.objectives] if spec.multi_objective else spec.objectives[0].metric
    mode: Any = [o.mode for o in spec.objectives] if spec.multi_objective else spec.objectives[0].mode
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return StudySearcher(
        space=SearchSpace(spec),
        metric=metric,
        mode=mode,
        sampler=make_sampler(spec.search.sampler, spec.multi_objective, spec.search.seed, grid_points(spec) if spec.search.sampler == "grid" else None),
        study_name=spec.name,
        storage=optuna.storages.RDBStorage(workdir.optuna_url(spec.name)),
        points_to_evaluate=[dict(p) for p in spec.search.start_points] or None,
        pruning=spec.pruning,
    )


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default spells out every parameter)."""
    return f"trial_{trial.config.get(OPTUNA_TRIAL_KEY, 'x')}_{trial.trial_id}"


def _quiet_libraries(verbose: bool) -> None:
    """Our own progress replaces Ray's console output; keep the libraries' chatter off it."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    if not verbose:
        for name in ("mlflow", "alembic", "ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _init_ray(address: str | None, verbose: bool) -> bool:
    """Starts (or joins) Ray; returns True when this call started it.

    (Pre-warming worker processes with import tasks was measured and dropped: on 2 cores the
    warm-up competes with the first trials and made an 8-trial study 40 % slower.)
    """
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose, "logging_level": "INFO" if verbose else "WARNING"}
    ray.init(address=address, **kwargs)
    return True


@dataclass
class _Tracking:
    tracker: Tracker
    experiment_id: str
    parent_run_id: str
    searcher: StudySearcher


def _setup_tracking(spec: StudySpec, workdir: Workdir, uri: str, study_yaml: str) -> _Tracking:
    """MLflow experiment and parent run, and the Optuna study that links back to them."""
    tracker = Tracker(uri, workdir.artifact_root)
    experiment_id = tracker.experiment_id(spec.experiment_name)
    summary = {"search": spec.search.model_dump(), "objectives": [o.model_dump() for o in spec.objectives], "methods": [m.key for m in spec.method_entries], "dataset": spec.dataset.name, "model": spec.model.name}
    parent = tracker.start_study(experiment_id, spec.name, summary, study_yaml)
    try:
        searcher = _make_searcher(spec, workdir)
        searcher.study.set_user_attr(PARENT_ATTR, parent)
        searcher.study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
        searcher.study.set_user_attr(TRACKING_ATTR, uri)
    except BaseException as exc:
        tracker.end_run(parent, "FAILED", {STATUS_TAG: "failed", REASON_TAG: collapse(str(exc))})
        raise
    return _Tracking(tracker, experiment_id, parent, searcher)


def _trainable(spec: StudySpec, workdir: Workdir) -> Any:
    trainable = tune.with_parameters(train_trial, study=spec.model_dump(mode="json"), data_dir=str(workdir.data_dir))
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _fit(spec: StudySpec, workdir: Workdir, tuner: tune.Tuner, progress: Progress, tracking_cb: MlflowTrialCallback | None, tracker: Tracker, experiment_id: str, parent: str, timings: dict[str, float], started_ray: bool, console: Console, t0: float) -> StudyOutcome:
    """Runs the tuner; whatever happens, closes every open MLflow run and the parent run. Then
    the summary table and the dashboard."""
    status, reason = "KILLED", "interrupted"
    try:
        t2 = time.perf_counter()
        with progress:
            tuner.fit()
        timings["fit"] = time.perf_counter() - t2
        timings["tracking"] = tracking_cb.seconds if tracking_cb is not None else 0.0
        timings.update(progress.trial_seconds())
        counts = progress.counts()
        ended = counts.get("completed", 0) + counts.get("pruned", 0) + counts.get("failed", 0)
        if ended < spec.search.num_trials:  # Ray Tune turns a first Ctrl-C into a graceful stop
            status, reason = "KILLED", f"interrupted after {ended} of {spec.search.num_trials} trials"
        else:
            status, reason = "FINISHED", ""
    except KeyboardInterrupt:
        status, reason = "KILLED", "interrupted by the user"
        raise
    except Exception as exc:
        status, reason = "FAILED", collapse(str(exc))
        raise
    finally:
        t3 = time.perf_counter()
        if tracking_cb is not None:
            tracking_cb.flush()
        _close_open_runs(tracker, experiment_id, parent, reason or "study ended before the trial finished")
        tracker.end_run(parent, status, {STATUS_TAG: status.lower(), **({REASON_TAG: reason} if reason else {})})
        if started_ray:
            ray.shutdown()
        timings["teardown"] = time.perf_counter() - t3
    console.print(progress.summary())
    _rebuild_dashboard(spec, workdir, console, timings)
    timings["total"] = time.perf_counter() - t0
    return StudyOutcome(spec.name, experiment_id, parent, progress.counts(), timings, interrupted=status == "KILLED")


def _preflight(spec: StudySpec, storage: str | None, autoscaling: bool, console: Console) -> None:
    """Resources (every study) and shared storage (when given, or on a multi-node cluster)."""
    try:
        check_resources(spec.resources.cpu, spec.resources.gpu)
    except PreflightError as exc:
        if not autoscaling:
            raise
        console.print(f"warning: {exc} (waiting for the autoscaler)", highlight=False)
    if storage is not None or len(alive_nodes()) > 1:
        if storage is None:
            raise PreflightError("storage: this Ray cluster has several nodes; give --storage a shared filesystem path or s3://... that every node can reach (trial checkpoints live there)")
        check_storage(storage)


def launch(spec: StudySpec, workdir: Workdir, *, address: str | None = None, tracking_uri: str | None = None, storage: str | None = None, autoscaling: bool = False, overwrite: bool = False, verbose: bool = False, console: Console | None = None) -> StudyOutcome:
    """``storage``: Ray Tune's storage (shared path or s3://; default ``<workdir>/<study>``)."""
    console = console or Console()
    _quiet_libraries(verbose)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    uri = spec.tracking_uri(workdir.tracking_uri, tracking_uri)
    check_tracking(uri)
    study_dir = _prepare_study_dir(spec, workdir, overwrite, console)
    storage_path = f"{storage.rstrip('/')}/{spec.name}" if storage else str(study_dir)
    # MLflow's and Optuna's sqlite set-up runs while Ray starts: both take seconds.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_setup_tracking, spec, workdir, uri, workdir.study_file(spec.name).read_text())
        try:
            started_ray = _init_ray(address, verbose)
        except BaseException:
            with contextlib.suppress(Exception):
                ctx = pending.result()
                ctx.tracker.end_run(ctx.parent_run_id, "FAILED", {STATUS_TAG: "failed", REASON_TAG: "Ray did not start"})
            raise
        timings["ray_start"] = time.perf_counter() - t0
        try:
            ctx = pending.result()
        except BaseException:
            if started_ray:
                ray.shutdown()
            raise
    timings["setup"] = time.perf_counter() - t0
    tracker, experiment_id, parent, searcher = ctx.tracker, ctx.experiment_id, ctx.parent_run_id, ctx.searcher

    progress = Progress(spec.name, spec.objectives, spec.search.num_trials, spec.method_entries[0].key, console)
    tracking_cb = MlflowTrialCallback(uri, str(workdir.artifact_root), experiment_id, parent, spec.model_dump(mode="json"), searcher)
    try:
        _preflight(spec, storage, autoscaling, console)
        searcher.study.set_user_attr(RAY_EXPERIMENT_ATTR, f"{storage_path}/{workdir.ray_experiment_dir(spec.name).name}")
        if spec.pruning.enabled:
            open_board(spec.name)
        tuner = tune.Tuner(
            _trainable(spec, workdir),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=StudyScheduler(searcher, spec.name),
                num_samples=spec.search.num_trials,
                max_concurrent_trials=spec.search.max_concurrent,
                reuse_actors=True,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=workdir.ray_experiment_dir(spec.name).name,
                storage_path=storage_path,
                callbacks=[tracking_cb, ProgressCallback(progress, searcher)],
                failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=0,
            ),
        )
    except BaseException as exc:
        tracker.end_run(parent, "FAILED", {STATUS_TAG: "failed", REASON_TAG: collapse(str(exc))})
        if started_ray:
            ray.shutdown()
        raise
    return _fit(spec, workdir, tuner, progress, tracking_cb, tracker, experiment_id, parent, timings, started_ray, console, t0)


def _rebuild_dashboard(spec: StudySpec, workdir: Workdir, console: Console, timings: dict[str, float]) -> None:
    """The study's dashboard, rebuilt when a study ends; a failure here is reported, not raised."""
    t = time.perf_counter()
    try:
        from certstudy.dashboards.build import build_dashboard

        built = build_dashboard(workdir, spec.name)
        console.print(f"dashboard: {built.path} (also in the MLflow parent run)", highlight=False)
    except Exception as exc:  # noqa: BLE001 - the study's results are already recorded
        console.print(f"warning: the dashboard was not built: {collapse(str(exc))}", highlight=False)
    timings["dashboard"] = time.perf_counter() - t


def resume(study: str, workdir: Workdir, *, address: str | None = None, verbose: bool = False, console: Console | None = None) -> StudyOutcome:
    """Continues an interrupted study where it stopped: finished trials stay finished, unfinished
    and errored ones resume from their last checkpoint (in their own MLflow runs), Optuna keeps its
    history and earlier prune decisions, and the parent run is reopened."""
    console = console or Console()
    _quiet_libraries(verbose)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    spec_path = workdir.study_file(study)
    if not spec_path.exists():
        raise CertstudyError(f"no study {study!r} in {workdir.root} (looked for {spec_path})")
    spec = load_study(spec_path)
    stored = StoredStudy.open(workdir, spec, workdir.artifact_root)
    exp_dir = stored.ray_experiment
    if not tune.Tuner.can_restore(exp_dir):
        raise CertstudyError(f"study {study!r} has no Ray Tune state to resume from at {exp_dir}")
    parent, tracker = stored.parent_run_id, stored.tracker
    if not parent:
        raise CertstudyError(f"study {study!r}: its Optuna storage does not name its MLflow parent run")
    experiment_id = tracker.client.get_run(parent).info.experiment_id
    tracker.client.update_run(parent, status="RUNNING")
    tracker.client.set_tag(parent, STATUS_TAG, "running")
    started_ray = False
    try:
        started_ray = _init_ray(address, verbose)
        timings["ray_start"] = time.perf_counter() - t0
        if spec.pruning.enabled:
            open_board(spec.name)
        tuner = tune.Tuner.restore(exp_dir, trainable=_trainable(spec, workdir), resume_unfinished=True, resume_errored=True)
        earlier = _ended_counts(stored.optuna)
        progress = Progress(spec.name, spec.objectives, spec.search.num_trials, spec.method_entries[0].key, console, earlier=earlier)
        tracking_cb = None
        for cb in tuner._local_tuner.get_run_config().callbacks or []:  # restored from tuner.pkl
            if isinstance(cb, ProgressCallback):
                cb.progress = progress
            elif isinstance(cb, MlflowTrialCallback):
                tracking_cb = cb
        console.print(f"resuming study {spec.name}: {sum(earlier.values())} of {spec.search.num_trials} trials had ended", highlight=False)
    except BaseException as exc:
        tracker.end_run(parent, "FAILED", {STATUS_TAG: "failed", REASON_TAG: collapse(f"resume failed: {exc}")})
        if started_ray:
            ray.shutdown()
        raise
    return _fit(spec, workdir, tuner, progress, tracking_cb, tracker, experiment_id, parent, timings, started_ray, console, t0)


def _ended_counts(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        out[state_name(t.state)] = out.get(state_name(t.state), 0) + 1
    return out


def _close_open_runs(tracker: Tracker, experiment_id: str, parent: str, reason: str) -> None:
    for run in tracker.child_runs(experiment_id, parent):
        if run.info.status in ("RUNNING", "SCHEDULED"):
            tracker.end_run(run.info.run_id, "KILLED", {STATUS_TAG: "killed", REASON_TAG: reason})

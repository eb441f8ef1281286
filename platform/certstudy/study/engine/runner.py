"""``certstudy launch`` and ``resume``: open a session, fit the Ray Tune trials, summarise.

Order of work in ``launch``: validate (done by the caller) -> a ``StudySession`` (study folder,
MLflow experiment and parent run, Optuna study, Ray) -> preflight -> ``Tuner.fit`` -> the session
closes every run still open -> summary -> the caller's end hooks. ``resume`` reopens the session
from the work directory and restores the Ray Tune experiment instead. What each path out of a
session records is the session's business (``study/engine/session.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from rich.console import Console

from certstudy.errors import CertstudyError, stops_on_disk_full
from certstudy.study.engine.callbacks import MlflowTrialCallback, ProgressCallback, restoring
from certstudy.study.engine.digest_callback import StateDigestsCallback
from certstudy.study.engine.optuna_bridge import StudyScheduler
from certstudy.study.engine.preflight import PreflightError, alive_nodes, check_resources, check_storage
from certstudy.study.engine.ray_start import RayConnection, join_cluster
from certstudy.study.engine.session import EndHook, StudyOutcome, StudySession
from certstudy.study.engine.stop_board import open_board
from certstudy.study.engine.trainable import train_trial
from certstudy.study.records.lock import StudyLock
from certstudy.study.records.names import OPTUNA_TRIAL_KEY, RAY_EXPERIMENT_ATTR
from certstudy.study.records.state_digests import record as record_digests
from certstudy.study.records.state_digests import verify as verify_digests
from certstudy.study.records.state_key import check_outside, state_key
from certstudy.study.records.stored_sqlite import can_resume
from certstudy.study.spec.schema import StudySpec
from certstudy.workdir import Workdir

__all__ = ["StudyOutcome", "launch", "resume"]


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default spells out every parameter)."""
    return f"trial_{trial.config.get(OPTUNA_TRIAL_KEY, 'x')}_{trial.trial_id}"


def _trainable(spec: StudySpec, workdir: Workdir) -> Any:
    trainable = tune.with_parameters(train_trial, study=spec.model_dump(mode="json"), data_dir=str(workdir.data_dir))
    return tune.with_resources(trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


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
            raise PreflightError(
                "storage: this Ray cluster has several nodes; give --storage a shared filesystem path or s3://... "
                "that every node can reach (trial checkpoints live there)"
            )
        check_storage(storage)


def _new_tuner(spec: StudySpec, workdir: Workdir, session: StudySession, storage_path: str, experiment: str) -> Any:
    """A new study's Ray Tune experiment: Optuna proposes, the study's scheduler prunes."""
    assert session.searcher is not None and session.tracking_cb is not None
    searcher = session.searcher
    return tune.Tuner(
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
            name=experiment,
            storage_path=storage_path,
            callbacks=[
                StateDigestsCallback(searcher, spec.name),
                session.tracking_cb,
                ProgressCallback(session.progress, searcher, spec.name),
                JsonLoggerCallback(),
            ],
            failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )


def _next_step(workdir: Workdir, study: str) -> Callable[[], str]:
    """What a study stopped by a full disk does next: resume when Ray Tune saved its state, else
    launch again."""

    def then() -> str:
        resumable = can_resume(str(workdir.ray_experiment_dir(study)))
        return f"certstudy resume {study}" if resumable else "launch the study again"

    return then


def _check_state_key(workdir: Workdir) -> None:
    """The key that authenticates the Ray state is usable and outside the work directory (one line
    otherwise, before anything is started)."""
    check_outside(workdir.root)
    state_key()


def launch(
    spec: StudySpec,
    workdir: Workdir,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    optuna_storage: str | None = None,
    storage: str | None = None,
    autoscaling: bool = False,
    overwrite: bool = False,
    verbose: bool = False,
    console: Console | None = None,
    on_end: Sequence[EndHook] = (),
    connection: RayConnection | None = None,
) -> StudyOutcome:
    """``storage``: Ray Tune's storage (shared path or s3://; default ``<workdir>/<study>``);
    ``optuna_storage``: an Optuna database URL (default: sqlite in the study's folder);
    ``connection``: the Ray connection the caller opened for the study (the session takes it over)."""
    console = console or Console()
    _check_state_key(workdir)
    if address is not None and connection is None and not ray.is_initialized():
        connection = join_cluster(address, verbose)  # first: a refused token or a dead head leaves nothing behind
    try:
        return _launch_session(
            spec,
            workdir,
            console,
            address,
            tracking_uri,
            optuna_storage,
            storage,
            autoscaling,
            overwrite,
            verbose,
            on_end,
            connection,
        )
    finally:
        if connection is not None:  # the session closed it, or was refused before it took it over
            connection.close()


def _launch_session(
    spec: StudySpec,
    workdir: Workdir,
    console: Console,
    address: str | None,
    tracking_uri: str | None,
    optuna_storage: str | None,
    storage: str | None,
    autoscaling: bool,
    overwrite: bool,
    verbose: bool,
    on_end: Sequence[EndHook],
    connection: RayConnection | None,
) -> StudyOutcome:
    session = StudySession(spec, workdir, console)
    session.progress.verbose = verbose
    storage_path = f"{storage.rstrip('/')}/{spec.name}" if storage else str(workdir.study_dir(spec.name))
    experiment = workdir.ray_experiment_dir(spec.name).name
    with stops_on_disk_full(str(workdir.root), _next_step(workdir, spec.name)), StudyLock(workdir, spec.name):
        with session:
            session.open_new(
                tracking_uri=tracking_uri,
                optuna_storage=optuna_storage,
                address=address,
                overwrite=overwrite,
                verbose=verbose,
                connection=connection,
            )
            assert session.tracker is not None and session.searcher is not None
            searcher = session.searcher
            session.tracking_cb = MlflowTrialCallback(
                session.tracker.tracking_uri,
                str(workdir.artifact_root),
                session.experiment_id,
                session.parent_run_id,
                spec.model_dump(mode="json"),
                searcher,
            )
            _preflight(spec, storage, autoscaling, console)
            searcher.study.set_user_attr(RAY_EXPERIMENT_ATTR, f"{storage_path}/{experiment}")
            if spec.pruning.enabled:
                open_board(spec.name)
            tuner = _new_tuner(spec, workdir, session, storage_path, experiment)
            if "://" not in storage_path:
                record_digests(searcher.study, Path(storage_path) / experiment)  # tuner.pkl, just written
            session.fit(tuner)
        return session.finish(on_end)


def resume(
    study: str,
    workdir: Workdir,
    *,
    address: str | None = None,
    verbose: bool = False,
    console: Console | None = None,
    on_end: Sequence[EndHook] = (),
) -> StudyOutcome:
    """Continues an interrupted study where it stopped: finished trials stay finished, unfinished
    and errored ones resume from their last checkpoint (in their own MLflow runs), Optuna keeps its
    history and earlier prune decisions, and the parent run is reopened."""
    console = console or Console()
    workdir.check_current(study)  # before the lock: a moved-aside folder is the live study under another name
    if not workdir.study_file(study).exists():
        raise CertstudyError(f"no study {study!r} in {workdir.root} (looked for {workdir.study_file(study)})")
    _check_state_key(workdir)
    with stops_on_disk_full(str(workdir.root), _next_step(workdir, study)), StudyLock(workdir, study):
        return _resume_locked(study, workdir, address, verbose, console, on_end)


def _resume_locked(
    study: str, workdir: Workdir, address: str | None, verbose: bool, console: Console, on_end: Sequence[EndHook]
) -> StudyOutcome:
    session = StudySession.reopen(study, workdir, verbose=verbose, console=console)
    session.progress.verbose = verbose
    spec = session.spec
    assert session.stored_optuna is not None
    verify_digests(session.stored_optuna, session.ray_experiment)  # before Ray starts or anything is unpickled
    with session:
        session.reopen_parent()
        session.start_ray(address, verbose)
        if spec.pruning.enabled:
            open_board(spec.name)
        with restoring(spec.name) as restored:
            tuner = tune.Tuner.restore(
                session.ray_experiment, trainable=_trainable(spec, workdir), resume_unfinished=True, resume_errored=True
            )
        if "://" not in session.ray_experiment:
            record_digests(session.stored_optuna, Path(session.ray_experiment))  # the tuner.pkl restore rewrote
        for cb in restored:  # unpickled from tuner.pkl, still holding the restored searcher
            if isinstance(cb, ProgressCallback):
                cb.progress = session.progress
            elif isinstance(cb, MlflowTrialCallback):
                session.tracking_cb = cb
        if session.tracking_cb is not None:
            filled = session.tracking_cb.backfill(session.ray_experiment)
            if filled:
                console.print(f"back-filled {filled} epoch(s) the interrupted driver had not written to MLflow")
        ended = sum(session.earlier.values())
        console.print(
            f"resuming study {spec.name}: {ended} of {spec.search.num_trials} trials had ended", highlight=False
        )
        session.fit(tuner)
    return session.finish(on_end)

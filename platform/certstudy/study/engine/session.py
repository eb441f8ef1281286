"""One owner for a study's lifecycle: the MLflow parent run, the Optuna storage and Ray.

Inside a session's ``with`` block, ``open_new`` opens a new study (a fresh study folder, the MLflow
experiment and parent run, the Optuna study that links back to them, and Ray, the last two
concurrently: each takes seconds); ``StudySession.reopen`` reads an interrupted one from its work
directory and ``reopen_parent`` / ``start_ray`` open it again. The session ends all three the same
way on every path out of the block, closing exactly what was opened:

- ``fit`` ran every planned trial: the parent run ends FINISHED;
- fewer trials ended (Ray Tune turns a first Ctrl-C into a graceful stop): KILLED, "interrupted
  after k of n trials";
- Ctrl-C: KILLED; any other error, a preflight refusal included: FAILED, with the reason.

Every child run still open is closed KILLED first, so no MLflow run is left RUNNING, and Ray is
shut down when the session started it. The summary is printed as soon as ``fit`` ends, before that
teardown; ``finish`` then runs the caller's end hooks (the CLI's dashboard rebuild), which may fail
without touching the recorded study.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import optuna
import ray
import yaml
from optuna.trial import TrialState
from ray import tune
from rich.console import Console

from certstudy.errors import CertstudyError, collapse, disk_full_cause
from certstudy.study.engine import atomic_sync
from certstudy.study.engine.callbacks import MlflowTrialCallback
from certstudy.study.engine.disk_full_stop import clear as clear_disk_full
from certstudy.study.engine.disk_full_stop import raise_if_stopped as raise_if_disk_full
from certstudy.study.engine.optuna_bridge import StudySearcher, make_sampler, open_storage
from certstudy.study.engine.preflight import check_optuna_storage
from certstudy.study.engine.progress import Progress
from certstudy.study.engine.quiet import quiet_libraries
from certstudy.study.engine.ray_start import RayConnection, join_cluster, start_local_ray, study_cpus
from certstudy.study.engine.stop_board import open_board
from certstudy.study.records.lock import running_studies, store_setup
from certstudy.study.records.names import (
    ENDED,
    EXPERIMENT_ATTR,
    PARENT_ATTR,
    REASON_TAG,
    STATUS_TAG,
    TRACKING_ATTR,
    State,
)
from certstudy.study.records.status import state_name
from certstudy.study.records.store_probe import check_store
from certstudy.study.records.stored import StoredStudy
from certstudy.study.records.tracking import Tracker
from certstudy.study.spec.loading import dump_study, load_study
from certstudy.study.spec.schema import StudySpec
from certstudy.study.spec.space import SearchSpace, grid_points
from certstudy.study.spec.store_urls import tracking_scheme
from certstudy.workdir import TRACKING_STORE, Workdir


@dataclass
class StudyOutcome:
    name: str
    experiment_id: str
    parent_run_id: str
    counts: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    started: float = 0.0  # time.perf_counter() when the session began


EndHook = Callable[[StudyOutcome], None]


def prepare_study_dir(spec: StudySpec, workdir: Workdir, overwrite: bool, console: Console) -> Path:
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


def _init_ray(address: str | None, verbose: bool, workdir: Workdir, spec: StudySpec) -> RayConnection | None:
    """Joins the cluster at ``address``, or starts this machine's own Ray (``study/engine/ray_start.py``);
    returns the connection, or None when this process was connected already.
    """
    if ray.is_initialized():
        return None
    if address is None:
        return start_local_ray(workdir, verbose, study_cpus(spec))
    return join_cluster(address, verbose)


def _make_searcher(spec: StudySpec, workdir: Workdir) -> StudySearcher:
    """The Optuna study (created in its storage) behind the Ray Tune searcher that proposes trials."""
    metric: Any = [o.metric for o in spec.objectives] if spec.multi_objective else spec.objectives[0].metric
    mode: Any = [o.mode for o in spec.objectives] if spec.multi_objective else spec.objectives[0].mode
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = grid_points(spec) if spec.search.sampler == "grid" else None
    return StudySearcher(
        space=SearchSpace(spec),
        metric=metric,
        mode=mode,
        sampler=make_sampler(spec.search.sampler, spec.multi_objective, spec.search.seed, grid),
        study_name=spec.name,
        storage=open_storage(workdir.optuna_url(spec.name)),
        points_to_evaluate=[dict(p) for p in spec.search.start_points] or None,
        pruning=spec.pruning,
    )


def ended_counts(study: optuna.Study) -> dict[str, int]:
    """Trials of the Optuna study that have ended, by certstudy's state name."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        out[state_name(t.state)] = out.get(state_name(t.state), 0) + 1
    return out


class StudySession:
    """A study's records and Ray, opened by ``open_new`` or ``reopen`` inside the ``with`` block and
    closed together on the way out (see the module docstring). Whatever was opened when a failure
    struck is what gets closed: the one cleanup path for every exit."""

    def __init__(
        self, spec: StudySpec, workdir: Workdir, console: Console, *, earlier: dict[str, int] | None = None
    ) -> None:
        self.spec, self.workdir, self.console = spec, workdir, console
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.tracker: Tracker | None = None
        self.experiment_id = ""
        self.parent_run_id = ""
        self.searcher: StudySearcher | None = None  # a new study's; a reopened one's is restored by Ray Tune
        self.ray_connection: RayConnection | None = None  # this session's Ray: it alone closes it
        self.earlier = dict(earlier or {})  # trials that had ended before a resume
        self.progress = Progress(
            spec.name,
            spec.objectives,
            spec.search.num_trials,
            spec.method_entries[0].key,
            console,
            earlier=earlier,
            epochs=spec.training.epochs,
        )
        self.tracking_cb: MlflowTrialCallback | None = None
        self.ray_experiment = ""  # a reopened study's Ray Tune experiment folder
        self.pending_parent = ""  # a reopened study's parent run, until ``reopen_parent``
        self.stored_optuna: optuna.Study | None = None  # a reopened study's Optuna study
        self._status: tuple[str, str] | None = None  # how fit ended: (MLflow status, reason)

    # opening -----------------------------------------------------------------------------------

    def open_new(
        self,
        *,
        tracking_uri: str | None = None,
        optuna_storage: str | None = None,
        address: str | None = None,
        overwrite: bool = False,
        verbose: bool = False,
        connection: RayConnection | None = None,
    ) -> None:
        """A new study's folder, then its records (MLflow, Optuna) and Ray, the last two concurrently.
        ``optuna_storage``: a database shared beyond this work directory (default: sqlite in the
        study's folder); the folder's ``stores.json`` names both stores for every later command.
        ``connection``: a Ray connection the caller opened for the study (``certstudy launch`` starts the local
        node while it imports the rest; ``--address`` joins first); the session owns it from here."""
        quiet_libraries(verbose)
        uri = self.spec.tracking_uri(self.workdir, tracking_uri)
        if uri != self.workdir.tracking_uri:
            check_store(uri, "--tracking-uri" if tracking_uri else "tracking.tracking_uri")
        if optuna_storage is not None:
            check_optuna_storage(optuna_storage, self.spec.name, overwrite)
        prepare_study_dir(self.spec, self.workdir, overwrite, self.console)
        self.workdir.record_stores(self.spec.name, uri, optuna_storage or self.workdir.own_optuna_url(self.spec.name))
        self._note_shared_sqlite(uri)
        if connection is not None:
            self.ray_connection = connection
            self._open_records(uri)
        else:
            with ThreadPoolExecutor(max_workers=1) as pool:
                records = pool.submit(self._open_records, uri)
                try:
                    self.start_ray(address, verbose)
                finally:
                    failed = records.exception()  # waits: whatever it opened is on the session to close
                if failed is not None:
                    raise failed
        self.timings["setup"] = time.perf_counter() - self.t0

    def _note_shared_sqlite(self, uri: str) -> None:
        """One line when another running study of this work directory records into the same sqlite
        tracking store: sqlite lets one writer at a time, so the two drivers' writes take turns
        (MLflow waits up to 20 s for the lock; a write that still finds it locked is retried by the
        tracking writer, buffered, never dropped). Several drivers at once belong on a server
        backed by PostgreSQL. Each launch records its stores before it looks, so of two launches
        racing, at least the later one names the other."""
        if tracking_scheme(uri) != "sqlite":
            return
        others = [
            name
            for name in running_studies(self.workdir)
            if name != self.spec.name and self.workdir.recorded_store(name, TRACKING_STORE) == uri
        ]
        if others:
            self.console.print(
                f"note: study {', '.join(others)} also records into {uri.removeprefix('sqlite:///')}; sqlite takes "
                f"one writer at a time, so the studies' MLflow writes take turns (slower, nothing lost). For "
                f"several drivers at once, use an MLflow server on PostgreSQL (README: Running on a cluster).",
                highlight=False,
            )

    def _open_records(self, uri: str) -> None:
        """MLflow experiment and parent run, and the Optuna study that links back to them."""
        spec, workdir = self.spec, self.workdir
        with store_setup(workdir):  # a new mlflow.db is created and migrated by one process at a time
            self.tracker = Tracker(uri, workdir.artifact_root)
            self.experiment_id = self.tracker.experiment_id(spec.experiment_name)
        summary = {
            "search": spec.search.model_dump(),
            "objectives": [o.model_dump() for o in spec.objectives],
            "methods": [m.key for m in spec.method_entries],
            "dataset": spec.dataset.name,
            "model": spec.model.name,
        }
        study_yaml = workdir.study_file(spec.name).read_text()
        self.tracker.close_lost_runs(self.experiment_id, spec.name, "the driver was lost; the study was launched again")
        self.parent_run_id = self.tracker.start_study(self.experiment_id, spec.name, summary, study_yaml)
        self.searcher = _make_searcher(spec, workdir)
        self.searcher.study.set_user_attr(PARENT_ATTR, self.parent_run_id)
        self.searcher.study.set_user_attr(EXPERIMENT_ATTR, self.experiment_id)
        self.searcher.study.set_user_attr(TRACKING_ATTR, uri)

    @classmethod
    def reopen(cls, study: str, workdir: Workdir, *, verbose: bool = False, console: Console) -> StudySession:
        """An interrupted study's session, read from its work directory (nothing is opened yet)."""
        quiet_libraries(verbose)
        workdir.check_current(study)
        spec_path = workdir.study_file(study)
        if not spec_path.exists():
            raise CertstudyError(f"no study {study!r} in {workdir.root} (looked for {spec_path})")
        spec = load_study(spec_path)
        workdir.check_current(study, spec.name)
        stored = StoredStudy.open(workdir, spec, workdir.artifact_root)
        if not tune.Tuner.can_restore(stored.ray_experiment):
            raise CertstudyError(f"study {study!r} has no Ray Tune state to resume from at {stored.ray_experiment}")
        if not stored.parent_run_id:
            raise CertstudyError(f"study {study!r}: its Optuna storage does not name its MLflow parent run")
        session = cls(spec, workdir, console, earlier=ended_counts(stored.optuna))
        session.tracker, session.ray_experiment = stored.tracker, stored.ray_experiment
        session.stored_optuna = stored.optuna
        session.pending_parent = stored.parent_run_id
        return session

    def reopen_parent(self) -> None:
        """The interrupted study's parent run, RUNNING again (inside the ``with`` block: from here on,
        leaving the block ends it)."""
        assert self.tracker is not None
        parent = self.pending_parent
        self.experiment_id = self.tracker.client.get_run(parent).info.experiment_id
        self.tracker.client.update_run(parent, status="RUNNING")
        self.parent_run_id = parent
        self.tracker.client.set_tag(parent, STATUS_TAG, State.RUNNING)

    def start_ray(self, address: str | None, verbose: bool) -> None:
        self.ray_connection = _init_ray(address, verbose, self.workdir, self.spec)
        self.timings["ray_start"] = time.perf_counter() - self.t0

    # running -----------------------------------------------------------------------------------

    def fit(self, tuner: tune.Tuner) -> None:
        """Runs the trials; records whether every planned trial ended."""
        t = time.perf_counter()
        self.timings["fit_start"] = t - self.t0
        where = str(self.workdir.root)
        clear_disk_full(self.spec.name)
        with self.progress, atomic_sync.installed():
            self.progress.watch(open_board(self.spec.name), self.workdir.progress_file(self.spec.name))
            try:
                tuner.fit()
                if self.tracking_cb is not None:
                    self.tracking_cb.flush()  # the last results are recorded, or the outage is reported
            except Exception:
                if self.tracking_cb is not None and self.tracking_cb.fatal is not None:
                    raise CertstudyError(self.tracking_cb.fatal) from None
                raise_if_disk_full(self.spec.name, where)
                raise
            raise_if_disk_full(self.spec.name, where)
            if self.tracking_cb is not None and self.tracking_cb.fatal is not None:
                raise CertstudyError(self.tracking_cb.fatal)
        self.timings["fit"] = time.perf_counter() - t
        self.timings["tracking"] = self.tracking_cb.seconds if self.tracking_cb is not None else 0.0
        self.timings.update(self.progress.trial_seconds())
        self._print_results()  # before teardown and the end hooks: the user has the results
        counts = self.progress.counts()
        ended = sum(counts.get(s, 0) for s in ENDED)
        if ended < self.spec.search.num_trials:  # Ray Tune turns a first Ctrl-C into a graceful stop
            self._status = ("KILLED", f"interrupted after {ended} of {self.spec.search.num_trials} trials")
        else:
            self._status = ("FINISHED", "")

    def _print_results(self) -> None:
        """The stored records' top trials (every trial of a resumed study); this session's own view
        where the stores cannot be read back."""
        from certstudy.study.records.results_table import results_table

        try:
            self.console.print(results_table(self.workdir, self.spec))
        except Exception as exc:  # noqa: BLE001 - the records are written; the table is a convenience
            self.console.print(f"warning: the results table was read from this session only ({collapse(str(exc))})")
            self.console.print(self.progress.summary())

    # closing -----------------------------------------------------------------------------------

    def __enter__(self) -> StudySession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            status, reason = self._status or ("FAILED", "the study ended before its trials ran")
        elif issubclass(exc_type, KeyboardInterrupt):
            status, reason = "KILLED", "interrupted by the user"
        else:
            status, reason = "FAILED", collapse(str(exc))
        self._status = (status, reason)
        self._close(status, reason)

    def _close(self, status: str, reason: str) -> None:
        """Ends what is open: the writer's queue, every child run still open, the parent run, Ray."""
        t = time.perf_counter()
        try:
            if self.tracking_cb is not None and self.tracking_cb.fatal is not None:
                self.console.print(
                    "warning: the study's MLflow runs stay RUNNING (the tracking store is unreachable); "
                    "certstudy resume reopens them, a new launch closes them",
                    highlight=False,
                )
                return
            try:
                self._end_runs(status, reason)
            except Exception as exc:
                if disk_full_cause(exc) is None:
                    raise
                self.console.print(
                    "warning: the study's MLflow runs could not be closed (disk full); certstudy status shows "
                    "them as interrupted, and resume or a new launch closes them",
                    highlight=False,
                )
        finally:
            if self.ray_connection is not None:
                self.ray_connection.close()
            self.timings["teardown"] = time.perf_counter() - t

    def _end_runs(self, status: str, reason: str) -> None:
        if self.tracking_cb is not None:
            self.tracking_cb.flush()
        if self.tracker is not None and self.parent_run_id:
            for run in self.tracker.child_runs(self.experiment_id, self.parent_run_id):
                if run.info.status in ("RUNNING", "SCHEDULED"):
                    tags = {STATUS_TAG: State.KILLED, REASON_TAG: reason or "study ended before the trial finished"}
                    self.tracker.end_run(run.info.run_id, "KILLED", tags)
            tags = {STATUS_TAG: status.lower(), **({REASON_TAG: reason} if reason else {})}
            if status == "FINISHED":
                self.tracker.drop_tag(self.parent_run_id, REASON_TAG)  # an earlier interruption's
            self.tracker.end_run(self.parent_run_id, status, tags)

    def finish(self, on_end: Sequence[EndHook] = ()) -> StudyOutcome:
        """After a closed session (``fit`` printed the summary): the end hooks (their failures are warnings)."""
        status = self._status[0] if self._status else "FAILED"
        outcome = StudyOutcome(
            self.spec.name,
            self.experiment_id,
            self.parent_run_id,
            self.progress.counts(),
            self.timings,
            interrupted=status == "KILLED",
            started=self.t0,
        )
        for hook in on_end:
            try:
                hook(outcome)
            except Exception as exc:  # noqa: BLE001 - the study's results are already recorded
                self.console.print(f"warning: {collapse(str(exc))}", highlight=False)
        self.timings["total"] = time.perf_counter() - self.t0
        return outcome

"""Optuna inside Ray Tune, on Optuna's ask/tell interface and Ray Tune's public ``Searcher``.

``StudySearcher`` proposes each Ray trial's configuration by asking the Optuna study (the
define-by-run space of ``study/spec/space.py``), tags the Optuna trial with its Ray trial id, and
tells the outcome: COMPLETE with the objective values, FAIL with a one-line reason (Ray's stock
``OptunaSearch`` tells an errored trial that had reported as COMPLETE), PRUNED when a prune
decision was taken (its last intermediate value kept).

Pruning, after every epoch (Ray calls the scheduler before the searcher, and only the scheduler can
act on a running trial): ``StudyScheduler`` hands the result to ``StudySearcher.observe``, which
reports the objective to Optuna at step = epoch (and the overfitting rule's series as a user attr)
and asks ``StudyPruner``, an Optuna ``BasePruner`` holding the study's pruner and the overfitting
rule. A decision is recorded on the trial (user attrs ``prune_reason``, ``pruned_at_epoch``); the
scheduler posts it on the study's stop board; the trial reads it as soon as its ``tune.report``
returns, stops training and finishes on its best epoch.

Every record of pruning lives in the Optuna storage, so a restored searcher reads it back instead
of reconciling a pickled copy: the searcher's own saved state is the map from Ray trial ids to
Optuna trial numbers, the error reasons not yet told and the sampler.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
import time
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from sqlalchemy.exc import IntegrityError, ProgrammingError

from certstudy.study.engine.disk_full_stop import request_stop, stopping
from certstudy.study.engine.ray_compat import stored_trial_handle
from certstudy.study.engine.stop_board import post_stop
from certstudy.study.records.names import (
    BEST_EPOCH_KEY,
    FAIL_REASON_ATTR,
    FAILURE_KEY,
    OPTUNA_TRIAL_KEY,
    OVERFITTING_SERIES_ATTR,
    RAY_TRIAL_ID_ATTR,
    PruneDecision,
    failure_reason,
    result_epoch,
)
from certstudy.study.spec.pruning import PruningConfig

logger = logging.getLogger(__name__)


def open_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's database at ``url``. Optuna creates its tables on first use without a lock, so two
    drivers opening a new shared database at once collide (PostgreSQL: "duplicate key value
    violates unique constraint pg_type_typname_nsp_index"); the one that lost opens it again and
    finds the tables made (table creation checks first)."""
    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def make_sampler(
    name: str, multi_objective: bool, seed: int, grid: dict[str, list[Any]] | None = None
) -> optuna.samplers.BaseSampler:
    """``auto`` is TPE for one objective and NSGA-II for several; ``grid`` walks ``grid`` (every
    combination once, in a seeded order)."""
    if name == "grid":
        return optuna.samplers.GridSampler(grid or {}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2" or (name == "auto" and multi_objective):
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


class StudyPruner(optuna.pruners.BasePruner):
    """The study's pruning section as one Optuna pruner: the configured Optuna pruner (single
    objective) on the reported objective, then the overfitting rule (Rice et al. 2020) on the series
    ``observe`` keeps in the trial's user attrs. A decision already recorded on the trial stands.
    Its only state is the trial in the storage."""

    def __init__(self, pruning: PruningConfig, metric: str) -> None:
        self.pruning = pruning
        self.metric = metric
        self.wrapped = pruning.pruner.build() if pruning.pruner.name != "none" else None

    def decide(self, study: optuna.Study, trial: FrozenTrial) -> PruneDecision | None:
        recorded = PruneDecision.from_attrs(trial.user_attrs)
        if recorded is not None:
            return recorded
        step = trial.last_step
        if self.wrapped is not None and step is not None and self.wrapped.prune(study, trial):
            value = trial.intermediate_values[step]
            return PruneDecision(self.pruning.pruner.name, step, f"{self.metric} {value:.4f} at epoch {step}")
        rule = self.pruning.overfitting
        series = overfitting_series(trial)
        if rule is not None and series:
            detail = rule.check(series)
            if detail is not None:
                return PruneDecision("overfitting", max(series), detail)
        return None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.decide(study, trial) is not None


def overfitting_series(trial: FrozenTrial) -> dict[int, tuple[float, float]]:
    """epoch -> (metric, gap) as ``observe`` recorded them (JSON: keys are strings, non-finite values
    null)."""
    stored = trial.user_attrs.get(OVERFITTING_SERIES_ATTR) or {}
    return {
        int(e): (math.nan if v is None else float(v), math.nan if g is None else float(g))
        for e, (v, g) in stored.items()
    }


def _finite_or_none(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


@dataclasses.dataclass
class _TrialCache:
    """What this searcher has observed of its running trials, so an epoch costs one storage read
    (the pruner's) instead of three. Not saved: a restored searcher reads the storage again."""

    last_epoch: dict[str, int] = dataclasses.field(default_factory=dict)
    series: dict[str, dict[int, tuple[float, float]]] = dataclasses.field(default_factory=dict)
    decisions: dict[str, PruneDecision] = dataclasses.field(default_factory=dict)


class StudySearcher(Searcher):
    """Proposes trials by asking the Optuna study, prunes through ``StudyPruner``, records failures
    as FAIL (with a reason) and pruned trials as PRUNED, and tags each Optuna trial with its Ray
    trial id. ``space`` is a define-by-run function of an Optuna trial, or fixed distributions by name."""

    def __init__(
        self,
        space: Callable[[Any], Any] | Mapping[str, optuna.distributions.BaseDistribution],
        metric: str | list[str],
        mode: str | list[str],
        *,
        sampler: optuna.samplers.BaseSampler | None = None,
        study_name: str | None = None,
        storage: optuna.storages.BaseStorage | None = None,
        points_to_evaluate: list[dict[str, Any]] | None = None,
        pruning: PruningConfig | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.pruning = pruning or PruningConfig()
        self.sampler = sampler or optuna.samplers.TPESampler()
        self.storage = storage or optuna.storages.InMemoryStorage()
        self.numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self.errors: dict[str, str] = {}  # Ray trial id -> why it errored, until told
        self.orphans: list[int] = []  # proposed after the last saved state, before a driver was lost
        self.staging_dir: str | None = None  # where Ray Tune last saved the experiment state
        self.pruner = StudyPruner(self.pruning, metric if isinstance(metric, str) else ",".join(metric))
        modes = mode if isinstance(mode, list) else [mode]
        study = optuna.create_study(
            storage=self.storage,
            sampler=self.sampler,
            pruner=self.pruner,
            study_name=study_name,
            load_if_exists=study_name is not None,
            directions=["minimize" if m == "min" else "maximize" for m in modes],
        )
        self.study_name = study.study_name
        if points_to_evaluate and not study.get_trials(deepcopy=False):
            for point in points_to_evaluate:
                study.enqueue_trial(point)
        self._study: optuna.Study | None = study
        self._handles: dict[int, optuna.trial.Trial] = {}
        self._cache = _TrialCache()

    # the Optuna study, reopened after unpickling ---------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Ray Tune pickles the searcher in ``tuner.pkl``: the storage (a URL and options, for an
        RDB storage) and the sampler travel, the live study and trial handles do not."""
        return {**self.__dict__, "_study": None, "_handles": {}, "_cache": _TrialCache()}

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.load_study(
                study_name=self.study_name, storage=self.storage, sampler=self.sampler, pruner=self.pruner
            )
        return self._study

    def _stored(self, trial_id: str) -> FrozenTrial | None:
        number = self.numbers.get(trial_id)
        return None if number is None else self._stored_number(number)

    def _stored_number(self, number: int) -> FrozenTrial | None:
        """Trial ``number`` as the storage has it now (trials are listed by number in one study)."""
        trials = self.study.get_trials(deepcopy=False)
        if number < len(trials) and trials[number].number == number:
            return trials[number]
        return next((t for t in trials if t.number == number), None)

    def _handle(self, number: int) -> optuna.trial.Trial:
        if number not in self._handles:
            self._handles[number] = stored_trial_handle(self.study, number)
        return self._handles[number]

    # Ray Tune's Searcher ---------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self.numbers:
            trial = self._handle(self.numbers[trial_id])
        elif self.orphans:
            # A trial Optuna proposed after Ray's last experiment checkpoint, before the driver
            # died: the new Ray trial takes it over (same parameters), so the study keeps
            # exactly its planned number of Optuna trials.
            trial = self._handle(self.orphans.pop(0))
        else:
            trial = self.study.ask(None if callable(self.space) else dict(self.space))
            self._handles[trial.number] = trial
        if callable(self.space):
            self.space(trial)  # a stored trial hands back the values it was given
        trial.set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        self.numbers[trial_id] = trial.number
        return {**trial.params, OPTUNA_TRIAL_KEY: trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Nothing: ``observe`` (called by the scheduler, which runs first) has recorded the epoch."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stored = self._stored(trial_id)
        if stored is None or stored.state.is_finished():
            # Unknown, or told already (before a lost driver, and run again after the resume, or
            # by a restored driver's last moments): the first outcome stands as recorded.
            return
        if error and stopping(self.study_name):
            return  # stopped by a full disk, not failed: the trial resumes (study/engine/disk_full_stop.py)
        number = stored.number
        reason = failure_reason(result) or (self.errors.get(trial_id, "trial errored") if error else None)
        if reason is not None:
            self._handle(number).set_user_attr(FAIL_REASON_ATTR, reason)
            self._tell(number, state=TrialState.FAIL)
        elif PruneDecision.from_attrs(stored.user_attrs) is not None:
            self._tell(number, state=TrialState.PRUNED)  # keeps the last intermediate value
        else:
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            values = [(result or {}).get(m) for m in metrics]
            try:
                if any(v is None for v in values):
                    self._tell(number, state=TrialState.PRUNED)  # ended without its objective
                else:
                    self._tell(number, values if len(values) > 1 else values[0])
            except (ValueError, TypeError) as exc:  # Optuna refuses a NaN objective, and tells it FAIL
                logger.warning("trial %s: %s", trial_id, exc)
        self.errors.pop(trial_id, None)

    def _tell(self, number: int, values: Any = None, state: TrialState | None = None) -> None:
        """``study.tell``. Optuna's grid sampler asks the study to stop once every grid point has been
        tried, which Optuna allows only inside ``study.optimize``: with ask/tell it raises after the
        outcome is stored. The study's end is Ray Tune's to decide (its ``num_samples``), so that
        request is dropped; any other error stands."""
        try:
            self.study.tell(number, values, state=state)
        except RuntimeError:
            told = self._stored_number(number)
            if told is None or not told.state.is_finished():
                raise

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        super().save_to_dir(checkpoint_dir, session_str)
        self.staging_dir = checkpoint_dir

    def save(self, checkpoint_path: str) -> None:
        """The searcher's own state (the Optuna storage holds the rest): trial ids to numbers,
        untold error reasons and the sampler (its random state)."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"numbers": self.numbers, "errors": self.errors, "sampler": self.sampler}, f)

    def restore(self, checkpoint_path: str) -> None:
        """The saved state, then what reached the Optuna storage after it: trials that ended stay
        ended (Ray may run them again from a checkpoint; Optuna keeps the first outcome), prune
        decisions are read from the trials, and trials proposed but unknown to the saved state are
        handed to the next Ray trials that ``suggest`` is asked for. The file is one the study
        wrote, authenticated before anything is unpickled (``study/records/state_digests.py``)."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)  # noqa: S301 - verified by its HMAC digest before Ray restores
        self.numbers, self.errors, self.sampler = dict(state["numbers"]), dict(state["errors"]), state["sampler"]
        self._study, self._handles, self._cache = None, {}, _TrialCache()
        known = set(self.numbers.values())
        self.orphans = [
            t.number
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number not in known
        ]

    # pruning ---------------------------------------------------------------------------------

    def observe(self, trial_id: str, result: Mapping[str, Any]) -> PruneDecision | None:
        """Records one epoch's result and returns the trial's prune decision (a new one, or the
        one taken earlier), or None. Each epoch is taken once: a result seen again (Ray's final
        duplicate, or an epoch repeated after a resume) changes nothing."""
        cache = self._cache
        if trial_id not in self.numbers:
            return None
        if trial_id not in cache.last_epoch and not self._warm(trial_id):
            return cache.decisions.get(trial_id)
        if trial_id in cache.decisions or failure_reason(result) is not None or BEST_EPOCH_KEY in result:
            return cache.decisions.get(trial_id)
        epoch = result_epoch(result)
        if epoch <= cache.last_epoch[trial_id]:
            return None
        cache.last_epoch[trial_id] = epoch
        handle = self._handle(self.numbers[trial_id])
        value = result.get(self.metric) if isinstance(self.metric, str) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            handle.report(float(value), epoch)
        rule = self.pruning.overfitting
        if rule is not None:
            series = cache.series.setdefault(trial_id, {})
            series[epoch] = (float(result.get(rule.metric, math.nan)), float(result.get(rule.gap_metric, math.nan)))
            handle.set_user_attr(
                OVERFITTING_SERIES_ATTR,
                {str(e): [_finite_or_none(v), _finite_or_none(g)] for e, (v, g) in sorted(series.items())},
            )
        if self.pruning.pruner.name == "none" and rule is None:
            return None
        stored = self._stored(trial_id)
        decision = self.pruner.decide(self.study, stored) if stored is not None else None
        if decision is not None:
            for key, value in decision.attrs().items():
                handle.set_user_attr(key, value)
            cache.decisions[trial_id] = decision
        return decision

    def _warm(self, trial_id: str) -> bool:
        """Reads a trial this searcher has not observed yet from the storage (a restored driver's):
        its decision, its last observed epoch and its series. False when it has ended there."""
        stored = self._stored(trial_id)
        if stored is None:
            return False
        recorded = PruneDecision.from_attrs(stored.user_attrs)
        if recorded is not None:
            self._cache.decisions[trial_id] = recorded
        if stored.state.is_finished():
            return False
        series = overfitting_series(stored)
        self._cache.series[trial_id] = series
        self._cache.last_epoch[trial_id] = max([*stored.intermediate_values, *series], default=-1)
        return True

    def prune_decision(self, trial_id: str) -> PruneDecision | None:
        if trial_id in self._cache.decisions:
            return self._cache.decisions[trial_id]
        stored = self._stored(trial_id)
        return None if stored is None else PruneDecision.from_attrs(stored.user_attrs)

    def note_error(self, trial_id: str, reason: str) -> None:
        self.errors[trial_id] = reason


class StudyScheduler(FIFOScheduler):
    """Runs trials first-in first-out, asks the searcher after every epoch whether to prune, and
    passes error reasons to the searcher before it records them. It holds no state of its own."""

    def __init__(self, searcher: StudySearcher, study: str) -> None:
        super().__init__()
        self.searcher = searcher
        self.study_name = study

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        try:
            decision = self.searcher.observe(trial.trial_id, result)
        except Exception as exc:
            if request_stop(self.study_name, exc, "the Optuna storage"):  # its disk is full: the study stops
                return TrialScheduler.CONTINUE
            raise
        if decision is None or BEST_EPOCH_KEY in result or failure_reason(result) is not None:
            return TrialScheduler.CONTINUE
        if post_stop(self.study_name, trial.trial_id, decision.reason, decision.epoch):
            # The trial read the request and still trained another epoch: stop it the hard way.
            logger.warning("trial %s ignored its stop request; stopping it", trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        reason = trial_error_reason(trial)
        request_stop(
            self.study_name, reason, "a trial's checkpoint"
        )  # called first of Ray's error hooks: the others see ``stopping``
        self.searcher.note_error(trial.trial_id, reason)
        super().on_trial_error(tune_controller, trial)


def trial_error_reason(trial: Any) -> str:
    """One line naming the exception a Ray trial ended with."""
    try:
        err = trial.get_error()
    except Exception:  # noqa: BLE001 - the error file may be gone; the reason is best effort
        err = None
    if err is None:
        return "trial errored"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:500]


__all__ = ["FAILURE_KEY", "StudyScheduler", "StudySearcher", "make_sampler", "trial_error_reason"]

"""Optuna inside Ray Tune: a searcher that proposes and records trials, a scheduler that prunes.

Ray's ``OptunaSearch`` proposes configurations well but records outcomes poorly: it hard-codes a
no-op pruner and never asks Optuna whether to prune, a trial stopped by a Ray scheduler reaches
Optuna as COMPLETE with its truncated value, a trial that errored after reporting is told as
COMPLETE too, and nothing links an Optuna trial to its Ray trial. ``StudySearcher`` subclasses it
(Ray 2.60 is pinned; ``tests/test_ray_contract.py`` fails loudly if the private names used here
change) and ``StudyScheduler``, a thin ``FIFOScheduler``, holds a reference to it.

Pruning, after every epoch (Ray calls the scheduler before the searcher, and only the scheduler
can act on a running trial): the scheduler hands the result to ``StudySearcher.observe``, which
reports the objective to Optuna at step = epoch, asks the study's pruner, applies the
overfitting rule, and records a decision (Optuna user attrs ``prune_reason``,
``pruned_at_epoch``). The scheduler posts the decision on the study's stop board; the trial reads
it as soon as its ``tune.report`` returns, stops training and finishes on its best epoch; the
searcher then tells Optuna PRUNED (its last intermediate value kept).

All pruning state lives in the searcher, which Ray saves with every experiment checkpoint and
restores in place; ``tuner.pkl`` pickles searcher, scheduler and callbacks together, so after
``Tuner.restore`` the scheduler and the callbacks still point at the restored searcher. The
Optuna storage (sqlite) is the second record: decisions found there are taken back on restore.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch
from sqlalchemy.exc import IntegrityError, ProgrammingError

from certstudy.study.engine.disk_full_stop import request_stop, stopping
from certstudy.study.engine.stop_board import post_stop
from certstudy.study.records.names import (
    BEST_EPOCH_KEY,
    FAIL_REASON_ATTR,
    FAILURE_KEY,
    OPTUNA_TRIAL_KEY,
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


class StudySearcher(OptunaSearch):
    """``OptunaSearch`` that prunes, records failures as FAIL (with a reason) and pruned trials as
    PRUNED, and tags each Optuna trial with its Ray trial id."""

    def __init__(self, *args: Any, pruning: PruningConfig | None = None, **kwargs: Any) -> None:
        self._pruning = pruning or PruningConfig()
        self._errors: dict[str, str] = {}
        self._pruned: dict[str, PruneDecision] = {}
        self._observed: dict[str, int] = {}  # trial id -> last epoch observed
        self._series: dict[str, dict[int, tuple[float, float]]] = {}  # for the overfitting rule
        self.staging_dir: str | None = None  # where Ray Tune last saved the experiment state
        super().__init__(*args, **kwargs)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        super().save_to_dir(checkpoint_dir, session_str)
        self.staging_dir = checkpoint_dir

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        if self._pruning.pruner.name != "none" and isinstance(mode, str):
            self._ot_study.pruner = self._pruning.pruner.build()

    # pruning ---------------------------------------------------------------------------------

    def observe(self, trial_id: str, result: Mapping[str, Any]) -> PruneDecision | None:
        """Records one epoch's result and returns the trial's prune decision (a new one, or the
        one taken earlier), or None. Each epoch is taken once: a result seen again (Ray's final
        duplicate, or an epoch repeated after a resume) changes nothing."""
        if (
            failure_reason(result) is not None
            or BEST_EPOCH_KEY in result
            or trial_id not in self._ot_trials
            or trial_id in self._completed_trials
        ):
            return self._pruned.get(trial_id)
        epoch = result_epoch(result)
        if epoch <= self._observed.get(trial_id, -1) or trial_id in self._pruned:
            return self._pruned.get(trial_id)
        self._observed[trial_id] = epoch
        ot_trial = self._ot_trials[trial_id]
        decision = None
        value = result.get(self.metric) if isinstance(self.metric, str) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            ot_trial.report(float(value), epoch)
            if self._pruning.pruner.name != "none" and ot_trial.should_prune():
                decision = PruneDecision(
                    self._pruning.pruner.name, epoch, f"{self.metric} {value:.4f} at epoch {epoch}"
                )
        rule = self._pruning.overfitting
        if decision is None and rule is not None:
            series = self._series.setdefault(trial_id, {})
            series[epoch] = (float(result.get(rule.metric, math.nan)), float(result.get(rule.gap_metric, math.nan)))
            detail = rule.check(series)
            if detail is not None:
                decision = PruneDecision("overfitting", epoch, detail)
        if decision is not None:
            self._pruned[trial_id] = decision
            for key, value in decision.attrs().items():
                ot_trial.set_user_attr(key, value)
        return decision

    def prune_decision(self, trial_id: str) -> PruneDecision | None:
        return self._pruned.get(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        """Ray's restore, then what reached the Optuna storage after the checkpoint: trials that
        ended (Ray may run them again from a checkpoint; Optuna keeps their first outcome), prune
        decisions, and trials proposed but unknown to the checkpoint (taken over by ``suggest``)."""
        super().restore(checkpoint_path)
        self.__dict__.setdefault("_pruned", {})
        by_number = {t.number: t for t in self._ot_study.get_trials(deepcopy=False)}
        known = {t.number for t in self._ot_trials.values()}
        self._orphans = [
            t._trial_id for n, t in sorted(by_number.items()) if t.state == TrialState.RUNNING and n not in known
        ]
        for trial_id, ot_trial in self._ot_trials.items():
            stored = by_number.get(ot_trial.number)
            if stored is not None and stored.state.is_finished():
                self._completed_trials.add(trial_id)
            decision = PruneDecision.from_attrs(stored.user_attrs) if stored is not None else None
            if decision is not None and trial_id not in self._pruned:
                self._pruned[trial_id] = decision

    # Ray hooks -------------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        orphans = self.__dict__.setdefault("_orphans", [])
        if trial_id not in self._ot_trials and orphans:
            # A trial Optuna proposed after Ray's last experiment checkpoint, before the driver
            # died: the new Ray trial takes it over (same parameters), so the study keeps
            # exactly its planned number of Optuna trials.
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphans.pop(0))
        config = super().suggest(trial_id)
        if config is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        return {**config, OPTUNA_TRIAL_KEY: ot_trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Nothing: ``observe`` (called by the scheduler, which runs first) has recorded the epoch."""

    def note_error(self, trial_id: str, reason: str) -> None:
        self._errors[trial_id] = reason

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return  # told once already (e.g. before a lost driver, and run again after the resume)
        if error and stopping(self._study_name):
            return  # stopped by a full disk, not failed: the trial resumes (study/engine/disk_full_stop.py)
        reason = failure_reason(result) or (self._errors.get(trial_id, "trial errored") if error else None)
        if reason is None and trial_id not in self._pruned:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        if trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            # Told already by a path this searcher did not see (a restored driver's last moments):
            # Optuna refuses to update a finished trial, and its outcome stands as recorded.
            self._completed_trials.add(trial_id)
            return
        if reason is not None:
            ot_trial.set_user_attr(FAIL_REASON_ATTR, reason)
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        else:
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)  # keeps the last intermediate value
        self._completed_trials.add(trial_id)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study


class StudyScheduler(FIFOScheduler):
    """Runs trials first-in first-out, asks the searcher after every epoch whether to prune, and
    passes error reasons to the searcher before it records them. It holds no state of its own."""

    def __init__(self, searcher: StudySearcher, study: str) -> None:
        super().__init__()
        self.searcher = searcher
        self.study = study

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        try:
            decision = self.searcher.observe(trial.trial_id, result)
        except Exception as exc:
            if request_stop(self.study, exc, "the Optuna storage"):  # its disk is full: the study stops
                return TrialScheduler.CONTINUE
            raise
        if decision is None or BEST_EPOCH_KEY in result or failure_reason(result) is not None:
            return TrialScheduler.CONTINUE
        if post_stop(self.study, trial.trial_id, decision.reason, decision.epoch):
            # The trial read the request and still trained another epoch: stop it the hard way.
            logger.warning("trial %s ignored its stop request; stopping it", trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        reason = trial_error_reason(trial)
        request_stop(
            self.study, reason, "a trial's checkpoint"
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

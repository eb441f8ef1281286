"""Optuna inside Ray Tune: a searcher that proposes trials and a scheduler beside it.

Ray's ``OptunaSearch`` proposes configurations well but records outcomes poorly: a trial that
errored after reporting is told to Optuna as COMPLETE, and nothing links an Optuna trial to its
Ray trial. ``StudySearcher`` subclasses it (Ray 2.60 is pinned; ``tests/test_ray_contract.py``
fails loudly if the private names used here change) and ``StudyScheduler``, a thin
``FIFOScheduler``, holds a reference to it. The split follows Ray's roles: the searcher proposes
and records, the scheduler decides about running trials. Both are pickled together into the
experiment state, so after ``Tuner.restore`` the scheduler still points at the restored searcher.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from certstudy.study.results import FAILURE_KEY, OPTUNA_TRIAL_KEY, failure_reason


def make_sampler(name: str, multi_objective: bool, seed: int) -> optuna.samplers.BaseSampler:
    """``auto`` is TPE for one objective and NSGA-II for several."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2" or (name == "auto" and multi_objective):
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


class StudySearcher(OptunaSearch):
    """``OptunaSearch`` that records failures as FAIL (with a reason) and tags each trial."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._errors: dict[str, str] = {}

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        return {**config, OPTUNA_TRIAL_KEY: ot_trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if failure_reason(result) is not None:
            return
        value = result.get(self.metric) if isinstance(self.metric, str) else None
        if isinstance(value, float) and math.isnan(value):
            return  # an objective measured only at the end (e.g. certified val accuracy)
        super().on_trial_result(trial_id, result)

    def note_error(self, trial_id: str, reason: str) -> None:
        self._errors[trial_id] = reason

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        reason = failure_reason(result) or (self._errors.get(trial_id, "trial errored") if error else None)
        if reason is None:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("fail_reason", reason)
        self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        self._completed_trials.add(trial_id)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study


class StudyScheduler(FIFOScheduler):
    """Runs trials first-in first-out; passes error reasons to the searcher before it records them."""

    def __init__(self, searcher: StudySearcher) -> None:
        super().__init__()
        self.searcher = searcher

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.searcher.note_error(trial.trial_id, trial_error_reason(trial))
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

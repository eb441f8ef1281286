"""The Ray Tune function trainable: resolves the trial's config and runs the plain trial loop.

It imports neither Optuna nor MLflow (workers never talk to them: the driver records), and it
turns an exception raised by the trial's own code into a final ``FAILURE_KEY`` report rather than
an error, so Ray's retries stay reserved for lost workers and nodes. In a study that prunes, it
reads the study's stop board after every report and hands a request to the trial loop, which
then finishes on its best epoch.

Ray's function trainable blocks each ``tune.report`` until the driver has taken the result and asked
for the next (``bench/report_cost.py``: about 7 ms on 2 cores, Optuna's write of the intermediate
value included). A study that prunes needs that wait: it is what puts the decision on the board
before the trial's next epoch. A study that does not prune has no decision to wait for, so its
reports without a checkpoint go through ``PipelinedReports``, a thread of the trial's own, and the
trial trains on; a report with a checkpoint, the trial's end and its failure wait until those
before them are taken, so the driver sees every result in order.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import torch
from ray import tune

from certstudy import phases
from certstudy.errors import disk_full_cause, one_line
from certstudy.study.engine.progress_board import PhasePoster
from certstudy.study.engine.stop_board import BoardReader
from certstudy.study.records.names import BEST_PREFIX, FAILURE_KEY, OPTUNA_TRIAL_KEY
from certstudy.study.spec.schema import StudySpec
from certstudy.study.spec.space import resolve
from certstudy.trial import run_trial
from certstudy.trial.loop import StopRequest


def _from_ray(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "ray"


def cap_gpu_memory(share: float) -> None:
    """A trial given a fraction of a GPU may use that fraction of its memory: Ray only sets
    CUDA_VISIBLE_DEVICES and isolates no memory (ray#3947), so one trial could starve the others."""
    if 0 < share < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(share, 0)


TRIAL_HOOK_ENV = "CERTSTUDY_TRIAL_HOOK"
"""``module:function`` called as ``function(trial_number, epoch)`` in the trial's process after each
epoch's report has reached the driver (every report is then a blocking one). For tools that must act
while a trial sits at a known point (the test suite's hold, ``tests/trial_hooks.py``); unset in a
real study, where it costs one lookup per trial."""


@functools.cache
def trial_hook() -> Callable[[int, int], None] | None:
    named = os.environ.get(TRIAL_HOOK_ENV)
    if not named:
        return None
    module, _, function = named.partition(":")
    return getattr(importlib.import_module(module), function)


class PipelinedReports:
    """``tune.report`` of checkpoint-less results from a thread of the trial's own (see the module
    docstring). ``submit`` returns at once; ``drain`` returns once every submitted result has been
    taken by the driver. When Ray stops the trial, ``tune.report`` raises in the reporting thread
    (``SystemExit``); the trial's next ``submit`` or ``drain`` raises it in the trial's own thread, as
    a blocking report would have."""

    def __init__(self, report: Callable[[dict[str, Any]], None]) -> None:
        self._report = report
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, metrics: dict[str, Any]) -> None:
        self._raise_if_failed()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="certstudy-reports", daemon=True)
            self._thread.start()
        self._queue.put(metrics)

    def drain(self) -> None:
        if self._thread is not None:
            self._queue.join()
        self._raise_if_failed()

    def close(self) -> None:
        """Ends the reporting thread once what was submitted is taken; raises nothing (on the way
        out of a trial, whatever ended it is the error that counts)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()
            self._queue.put(None)
            self._thread.join()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            metrics = self._queue.get()
            try:
                if metrics is None:
                    return
                if self.error is None:
                    self._report(metrics)
            except BaseException as exc:  # noqa: BLE001 - handed to the trial's thread
                self.error = exc
            finally:
                self._queue.task_done()


def train_trial(config: dict[str, Any], study: dict[str, Any], data_dir: str) -> None:
    spec = StudySpec.model_validate(study)
    cfg = resolve(spec, config).trial_config()
    cap_gpu_memory(spec.resources.gpu)
    last: dict[str, float] = {}
    board = BoardReader(spec.name) if spec.pruning.enabled else None
    hook = trial_hook()
    pipeline = PipelinedReports(tune.report) if board is None and hook is None else None

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> StopRequest | None:
        last.clear()
        last.update(metrics)
        # Ray requires every objective in every result: objectives measured only at the end
        # (certified val accuracy) are NaN before it (the searcher skips NaN), and the last report
        # of a trial that ends on its best epoch carries the best epoch's value.
        metrics = {**{o.metric: metrics.get(BEST_PREFIX + o.metric, math.nan) for o in spec.objectives}, **metrics}
        number, epoch = int(config.get(OPTUNA_TRIAL_KEY, -1)), int(metrics.get("epoch", -1))
        if pipeline is not None and checkpoint_dir is None:
            pipeline.submit(metrics)  # no prune decision can come: the trial trains on
            return None
        if pipeline is not None:
            pipeline.drain()  # the driver takes every result in order
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)
        if hook is not None:
            hook(number, epoch)
        request = board.read(tune.get_context().get_trial_id()) if board is not None else None
        return StopRequest(*request) if request is not None else None

    poster = PhasePoster(spec.name, tune.get_context().get_trial_id())
    try:
        checkpoint = tune.get_checkpoint()
        with phases.reporting_to(poster, cfg.training.epochs):
            if checkpoint is None:
                run_trial(cfg, report, data_dir=data_dir)
            else:
                with checkpoint.as_directory() as resume_dir:
                    run_trial(cfg, report, data_dir=data_dir, resume_from=resume_dir)
    except Exception as exc:  # noqa: BLE001 - recorded as the trial's failure reason
        if _from_ray(exc) or disk_full_cause(exc) is not None:
            raise  # a full disk stops the study (study/engine/disk_full_stop.py): the trial resumes later
        if pipeline is not None:
            pipeline.drain()
        objectives = {o.metric: last.get(o.metric, math.nan) for o in spec.objectives}
        tune.report({**objectives, "epoch": last.get("epoch", -1.0), FAILURE_KEY: one_line(exc)})
    finally:
        if pipeline is not None:
            pipeline.close()

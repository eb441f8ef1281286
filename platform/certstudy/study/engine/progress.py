"""Live study progress with rich: each running trial's epoch, phase and ETA, and the study's.

On a terminal a live view redraws at least every second (the clock moves during a phase that
reports nothing for minutes): a study line (done / running / pending, best so far, elapsed, ETA)
and one line per running trial (trial, method, epoch k/n, phase with its points done / total, its
latest objective, its ETA from its own epoch times). Elsewhere (CI, log files) each event is one
plain line: a trial's start and end, and each step of its end phases (certifying, attacking,
auditing). ``verbose`` adds a line per evaluated epoch. Phases come from the study's progress
board (``study/engine/progress_board.py``), read every second by a thread of the driver; epochs from the
trials' Ray Tune reports. At the end, a table of the top trials.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from certstudy import phases
from certstudy.study.records.names import ENDED, FINISHED, PruneDecision, State, summary_metrics
from certstudy.study.spec.schema import Objective
from certstudy.trial.robustness import ALARM_RESULT


@dataclass
class TrialView:
    label: str
    method: str
    state: str = State.RUNNING
    epoch: int = -1
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    compute_s: float = 0.0  # Ray's time_total_s: time inside the trainable's epochs
    phase: str = ""  # from the progress board: training, evaluating, certifying, ...
    step: str = ""
    done: int = 0
    total: int = 0
    epochs: int = 0  # the trial's planned epochs (0: not known yet)
    board_epoch: int = -1  # the epoch the board last saw it in
    epoch_times: list[float] = field(default_factory=list)  # monotonic times of its epoch reports

    phase_started: float = 0.0  # when its current phase step began (monotonic)

    def eta_s(self, now: float) -> float | None:
        """Seconds to the end of what it is doing, from its own pace: its remaining epochs at its
        epoch time (measured, or extrapolated from the batches of its first epoch), or, in an end
        phase that counts points, that step's remaining points at its rate so far. None before
        either is known. Steps of the end not yet begun are not in it."""
        if self.phase in END_PHASES:
            if self.total and self.done:
                return (now - self.phase_started) * (self.total - self.done) / self.done
            return None
        if not self.epochs:
            return None
        current = self.board_epoch if self.board_epoch >= 0 else self.epoch + 1
        fraction = self.done / self.total if self.phase == phases.TRAINING and self.total else 0.0
        if self.epoch_times:
            marks = [self.started_at, *self.epoch_times]
            per_epoch = (marks[-1] - marks[0]) / (len(marks) - 1)
        elif fraction > 0:
            per_epoch = (now - self.phase_started) / fraction
        else:
            return None
        return max(0.0, per_epoch * (self.epochs - current - fraction))


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


BOARD_POLL_S = 1.0
END_PHASES = frozenset({phases.TESTING, phases.CERTIFYING, phases.ATTACKING, phases.AUDITING})


class Progress:
    def __init__(
        self,
        study: str,
        objectives: list[Objective],
        num_trials: int,
        default_method: str,
        console: Console | None = None,
        earlier: dict[str, int] | None = None,
        epochs: int = 0,
    ) -> None:
        self.study_name = study
        self.earlier = dict(earlier or {})  # trials that ended before a resume
        self.objectives = objectives
        self.num_trials = num_trials
        self.default_method = default_method
        self.console = console or Console()
        self.trials: dict[str, TrialView] = {}
        self.t0 = time.monotonic()
        self._live: Live | None = None
        self.verbose = False  # a line per evaluated epoch
        self.epochs = epochs  # the study's planned epochs per trial (a trial's board entry overrides it)
        self._lock = threading.RLock()  # the board thread and Ray Tune's callbacks both update views
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self.t0 = time.monotonic()
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=2, transient=False, get_renderable=self._view)
            self._live.__enter__()
        else:
            self.console.print(f"study {self.study_name}: {self.num_trials} trials")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(*exc)
            self._live = None

    def watch(self, board: Any, snapshot: Path | None = None) -> None:
        """Reads the study's progress board every ``BOARD_POLL_S`` from a daemon thread, until exit,
        and writes where each running trial is to ``snapshot`` (``certstudy status`` reads it)."""
        import ray

        def poll() -> None:
            while not self._stop.wait(BOARD_POLL_S):
                try:
                    entries = ray.get(board.phases.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - a slow or restarting board costs a refresh, nothing else
                    continue
                for trial_id, phase in entries.items():
                    self.phase(trial_id, phase)
                if snapshot is not None:
                    self.write_snapshot(snapshot)

        self._stop.clear()
        self._watcher = threading.Thread(target=poll, name="certstudy-progress-board", daemon=True)
        self._watcher.start()

    def write_snapshot(self, path: Path) -> None:
        """``{trial number: {epoch, epochs, phase, state}}`` of the running trials, replaced whole."""
        with self._lock:
            rows = {
                v.label.removeprefix("trial "): {
                    "epoch": (v.board_epoch if v.board_epoch >= 0 else max(v.epoch, 0)) + 1,
                    "epochs": v.epochs,
                    "phase": self._phase_text(v),
                }
                for v in self.trials.values()
                if v.state == State.RUNNING
            }
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps({"at": time.time(), "trials": rows}))
            os.replace(tmp, path)
        except OSError:
            pass  # a full disk stops the study elsewhere; the snapshot is only a convenience

    @staticmethod
    def _phase_text(view: TrialView) -> str:
        text = view.phase or "starting"
        if view.step:
            text += f" {view.step}"
        if view.total:
            text += f" {view.done}/{view.total}"
        return text

    def phase(self, trial_id: str, phase: dict[str, Any]) -> None:
        """A trial's phase as its board entry has it; steps of the end phases are events."""
        with self._lock:
            view = self.trials.get(trial_id)
            if view is None or view.state != State.RUNNING:
                return
            name, step = str(phase.get("name", "")), str(phase.get("step", ""))
            new_step = (name, step) != (view.phase, view.step) or int(phase.get("epoch", -1)) != view.board_epoch
            if new_step:
                view.phase_started = time.monotonic()
            view.phase, view.step = name, step
            view.done, view.total = int(phase.get("done", 0)), int(phase.get("total", 0))
            view.epochs = int(phase.get("epochs", 0)) or view.epochs
            view.board_epoch = int(phase.get("epoch", -1))
        if new_step and name in END_PHASES:
            self._event(f"{view.label} ({view.method}) {name}" + (f" {step}" if step else ""))

    # events ----------------------------------------------------------------------------------

    def started(self, trial_id: str, label: str, method: str) -> None:
        view = self.trials.setdefault(
            trial_id, TrialView(label, method or self.default_method, started_at=time.monotonic(), epochs=self.epochs)
        )
        view.state = State.RUNNING
        self._event(f"{label} ({view.method}) started")

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        view = self.trials.get(trial_id)
        if view is None:
            return
        with self._lock:
            epoch = int(result.get("epoch", view.epoch))
            new_epoch = epoch > view.epoch
            if new_epoch:
                view.epoch_times.append(time.monotonic())
                if view.phase in ("", phases.TRAINING, phases.EVALUATING) and epoch + 1 < view.epochs:
                    # reported: it trains the next epoch now (the board may not have said so yet)
                    view.phase, view.step, view.done, view.total = phases.TRAINING, "", 0, 0
                    view.board_epoch, view.phase_started = epoch + 1, time.monotonic()
            view.epoch = epoch
            view.compute_s = float(result.get("time_total_s", view.compute_s))
            view.metrics = summary_metrics(
                {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            )
        if self.verbose and view.state == State.RUNNING and new_epoch:
            self._event(f"{view.label} ({view.method}) epoch {self._epoch_text(view)}: {self._objective_text(view)}")
        self._refresh()

    def completed(self, trial_id: str, result: dict[str, Any] | None, pruned: PruneDecision | None = None) -> None:
        """A trial that ended normally, or was pruned (its metrics are then its best epoch's)."""
        view = self.trials.get(trial_id)
        if view is None:
            return
        if result:
            self.result(trial_id, result)
            if result.get(ALARM_RESULT):
                self._event(f"ALARM {view.label} ({view.method}): {result[ALARM_RESULT]}")
        view.state, view.ended_at = (State.PRUNED if pruned else State.COMPLETED), time.monotonic()
        if pruned:
            view.reason = pruned.reason
            self._event(
                f"{view.label} ({view.method}) pruned at epoch {pruned.epoch} ({pruned.reason}: {pruned.detail}); "
                f"best epoch: {self._objective_text(view)}"
            )
        else:
            self._event(f"{view.label} ({view.method}) completed: {self._objective_text(view)}")

    def failed(self, trial_id: str, reason: str) -> None:
        view = self.trials.get(trial_id)
        if view is None:
            return
        view.state, view.reason, view.ended_at = State.FAILED, reason, time.monotonic()
        self._event(f"{view.label} ({view.method}) failed: {reason}")

    # rendering -------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {str(s): 0 for s in (State.RUNNING, State.COMPLETED, State.PRUNED, State.FAILED)}
        for state, n in self.earlier.items():
            out[state] = out.get(state, 0) + n
        for v in self.trials.values():
            out[v.state] = out.get(v.state, 0) + 1
        return out

    def trial_seconds(self) -> dict[str, float]:
        """Summed over finished trials: wall time from start to end, and time inside epochs."""
        ended = [v for v in self.trials.values() if v.ended_at]
        first = min((v.started_at for v in self.trials.values()), default=self.t0)
        return {
            "trial_wall": sum(v.ended_at - v.started_at for v in ended),
            "trial_compute": sum(v.compute_s for v in ended),
            "first_trial_start": first - self.t0,
            "last_trial_end": max((v.ended_at for v in ended), default=self.t0) - self.t0,
        }

    def best(self) -> TrialView | None:
        obj = self.objectives[0]
        done = [
            v
            for v in self.trials.values()
            if v.state in FINISHED and math.isfinite(v.metrics.get(obj.metric, math.nan))
        ]
        if not done:
            return None
        return (max if obj.mode == "max" else min)(done, key=lambda v: v.metrics[obj.metric])

    def _objective_text(self, view: TrialView) -> str:
        return ", ".join(
            f"{o.metric}={view.metrics[o.metric]:.4f}" for o in self.objectives if o.metric in view.metrics
        )

    def _status(self) -> Text:
        c = self.counts()
        best = self.best()
        best_text = f"best {self._objective_text(best)} ({best.label}, {best.method})" if best else "best: none yet"
        now = time.monotonic()
        ended = sum(c[s] for s in ENDED)
        pending = max(0, self.num_trials - ended - c[State.RUNNING])
        eta = self._study_eta(now, pending)
        return Text(
            f"{self.study_name}: {sum(c[s] for s in FINISHED)}/{self.num_trials} done ({c[State.PRUNED]} pruned), "
            f"{c[State.RUNNING]} running, {pending} pending, {c[State.FAILED]} failed | {best_text} | "
            f"elapsed {_clock(now - self.t0)}" + (f", ETA {_clock(eta)}" if eta is not None else ""),
        )

    def _study_eta(self, now: float, pending: int) -> float | None:
        """The running trials' longest ETA, plus the pending trials at the mean wall of ended ones
        spread over as many at a time as run now; None while nothing allows a guess."""
        with self._lock:
            running = [v for v in self.trials.values() if v.state == State.RUNNING]
            walls = [v.ended_at - v.started_at for v in self.trials.values() if v.ended_at]
        etas = [e for e in (v.eta_s(now) for v in running) if e is not None]
        if running and not etas:
            return None
        longest = max(etas, default=0.0)
        if not pending:
            return longest
        if not walls:
            return None
        return longest + math.ceil(pending / max(1, len(running))) * (sum(walls) / len(walls))

    @staticmethod
    def _epoch_text(view: TrialView) -> str:
        return f"{view.epoch + 1}/{view.epochs}" if view.epochs else f"{view.epoch + 1}"

    def _trial_line(self, view: TrialView, now: float) -> str:
        epoch = view.board_epoch if view.board_epoch >= 0 else max(view.epoch, 0)
        phase = self._phase_text(view)
        latest = self._objective_text(view) or "-"
        eta = view.eta_s(now)
        eta_text = _clock(eta) if eta is not None else "-"
        epochs = f"{epoch + 1}/{view.epochs}" if view.epochs else f"{epoch + 1}"
        return f"  {view.label} ({view.method}) epoch {epochs} | {phase} | {latest} | ETA {eta_text}"

    def _view(self) -> Group:
        """The live view: the study line, then one line per running trial."""
        now = time.monotonic()
        with self._lock:
            running = [v for v in self.trials.values() if v.state == State.RUNNING]
            lines = [self._trial_line(v, now) for v in running]
        return Group(self._status(), *(Text(line) for line in lines))

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def _event(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line, highlight=False)
            self._live.refresh()
        else:
            self.console.print(
                f"[{time.monotonic() - self.t0:5.0f}s] {line}  "
                f"({self._status().plain.split(' | ')[0].split(': ', 1)[1]})",
                highlight=False,
            )

    def summary(self, top: int = 5) -> Table:
        obj = self.objectives[0]
        done = [v for v in self.trials.values() if v.state in FINISHED and obj.metric in v.metrics]
        done.sort(key=lambda v: v.metrics[obj.metric], reverse=obj.mode == "max")
        table = Table(title=f"top trials of {self.study_name} by {obj.metric} ({obj.mode})")
        columns = [o.metric for o in self.objectives] + [
            m
            for m in ("val/clean_acc", "test/clean_acc", "test/robust_acc")
            if m not in {o.metric for o in self.objectives}
        ]
        table.add_column("trial")
        table.add_column("method")
        table.add_column("epochs", justify="right")
        for col in columns:
            table.add_column(col, justify="right")
        for v in done[:top]:
            epochs = f"{v.epoch + 1}" + (f" (pruned: {v.reason})" if v.state == State.PRUNED else "")
            table.add_row(
                v.label, v.method, epochs, *(f"{v.metrics[c]:.4f}" if c in v.metrics else "-" for c in columns)
            )
        return table

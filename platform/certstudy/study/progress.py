"""Live study progress with rich: trials running / completed / failed and the best so far.

On a terminal the status line redraws in place; elsewhere (CI, log files) each trial event is
one plain line. At the end, a table of the top trials.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from certstudy.study.records import PruneDecision, summary_metrics
from certstudy.study.spec import Objective
from certstudy.trial.robustness import ALARM_RESULT


@dataclass
class TrialView:
    label: str
    method: str
    state: str = "running"
    epoch: int = -1
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    compute_s: float = 0.0  # Ray's time_total_s: time inside the trainable's epochs


class Progress:
    def __init__(
        self,
        study: str,
        objectives: list[Objective],
        num_trials: int,
        default_method: str,
        console: Console | None = None,
        earlier: dict[str, int] | None = None,
    ) -> None:
        self.study = study
        self.earlier = dict(earlier or {})  # trials that ended before a resume
        self.objectives = objectives
        self.num_trials = num_trials
        self.default_method = default_method
        self.console = console or Console()
        self.trials: dict[str, TrialView] = {}
        self.t0 = time.monotonic()
        self._live: Live | None = None

    # lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self.t0 = time.monotonic()
        if self.console.is_terminal:
            self._live = Live(self._status(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        else:
            self.console.print(f"study {self.study}: {self.num_trials} trials")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._status())
            self._live.__exit__(*exc)
            self._live = None

    # events ----------------------------------------------------------------------------------

    def started(self, trial_id: str, label: str, method: str) -> None:
        view = self.trials.setdefault(
            trial_id, TrialView(label, method or self.default_method, started_at=time.monotonic())
        )
        view.state = "running"
        self._event(f"{label} ({view.method}) started")

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        view = self.trials.get(trial_id)
        if view is None:
            return
        view.epoch = int(result.get("epoch", view.epoch))
        view.compute_s = float(result.get("time_total_s", view.compute_s))
        view.metrics = summary_metrics(
            {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
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
        view.state, view.ended_at = ("pruned" if pruned else "completed"), time.monotonic()
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
        view.state, view.reason, view.ended_at = "failed", reason, time.monotonic()
        self._event(f"{view.label} ({view.method}) failed: {reason}")

    # rendering -------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {"running": 0, "completed": 0, "pruned": 0, "failed": 0}
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
            if v.state in ("completed", "pruned") and math.isfinite(v.metrics.get(obj.metric, math.nan))
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
        elapsed = time.monotonic() - self.t0
        return Text(
            f"{self.study}: {c['completed'] + c['pruned']}/{self.num_trials} done ({c['pruned']} pruned), "
            f"{c['running']} running, {c['failed']} failed | {best_text} | {elapsed:5.0f}s",
        )

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._status())

    def _event(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line)
            self._live.update(self._status())
        else:
            self.console.print(
                f"[{time.monotonic() - self.t0:5.0f}s] {line}  "
                f"({self._status().plain.split(' | ')[0].split(': ', 1)[1]})",
                highlight=False,
            )

    def summary(self, top: int = 5) -> Table:
        obj = self.objectives[0]
        done = [v for v in self.trials.values() if v.state in ("completed", "pruned") and obj.metric in v.metrics]
        done.sort(key=lambda v: v.metrics[obj.metric], reverse=obj.mode == "max")
        table = Table(title=f"top trials of {self.study} by {obj.metric} ({obj.mode})")
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
            epochs = f"{v.epoch + 1}" + (f" (pruned: {v.reason})" if v.state == "pruned" else "")
            table.add_row(
                v.label, v.method, epochs, *(f"{v.metrics[c]:.4f}" if c in v.metrics else "-" for c in columns)
            )
        return table

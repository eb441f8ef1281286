"""Where a running trial is: its phase (training, evaluating, certifying, attacking, auditing) and,
inside a phase that takes minutes, how many of its points are done.

The trial layer stays plain PyTorch: it announces phases and points here, and whoever runs it
decides where they go (``reporting_to``): ``certstudy launch`` sends them to the study's progress
board, a bare ``run_trial`` drops them. The sink is a context variable, so concurrent trials in one
process (threads, tests) each keep their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

TRAINING = "training"
EVALUATING = "evaluating"
TESTING = "testing"
CERTIFYING = "certifying"
ATTACKING = "attacking"
AUDITING = "auditing"


@dataclass(frozen=True)
class Phase:
    """A trial's position: the phase, the epoch (0-based) of ``epochs``, and points done of total
    in the phase's current step (0 of 0 when it counts none)."""

    name: str
    epoch: int = 0
    epochs: int = 0
    step: str = ""  # e.g. the certifier's name
    done: int = 0
    total: int = 0


Sink = Callable[[Phase], None]
_current: ContextVar[tuple[Sink, list[Phase]] | None] = ContextVar("certstudy_phase_sink", default=None)


@contextmanager
def reporting_to(sink: Sink, epochs: int) -> Iterator[None]:
    """Sends this context's phase announcements to ``sink`` (for a trial of ``epochs`` epochs)."""
    token = _current.set((sink, [Phase(TRAINING, 0, epochs)]))
    try:
        yield
    finally:
        _current.reset(token)


def enter(name: str, *, epoch: int | None = None, step: str = "", total: int = 0) -> None:
    """Announces the start of phase ``name`` (its step, and how many points it will count)."""
    state = _current.get()
    if state is None:
        return
    sink, last = state
    now = replace(last[0], name=name, step=step, done=0, total=total)
    if epoch is not None:
        now = replace(now, epoch=epoch)
    last[0] = now
    sink(now)


def advance(done: int, total: int) -> None:
    """Announces that ``done`` of ``total`` points of the current phase step are done."""
    state = _current.get()
    if state is None:
        return
    sink, last = state
    last[0] = replace(last[0], done=done, total=total)
    sink(last[0])

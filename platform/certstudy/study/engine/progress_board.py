"""Where each running trial is, between its epoch reports.

A trial reports to Ray Tune only at evaluated epochs, and its end (test, certification, AutoAttack,
audit) can run for minutes after the last one. So a trial also posts its phase (``certstudy.phases``)
to the study's board (``study/engine/stop_board.py``: a small named actor, no CPU, owned by the driver),
at most every ``POST_INTERVAL_S`` and whenever the phase or its step changes, without waiting for
an answer; the driver's live view reads the board every second. Losing a post loses nothing but a
refresh.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import ray

from certstudy.phases import Phase
from certstudy.study.engine.stop_board import NAMESPACE, board_name

POST_INTERVAL_S = 0.5


class PhasePoster:
    """The trial's side: a ``certstudy.phases`` sink that posts to the board (looked up once)."""

    def __init__(self, study: str, trial_id: str) -> None:
        self.study_name, self.trial_id = study, trial_id
        self._board: Any = None
        self._looked = False
        self._last: tuple[str, str] = ("", "")
        self._sent_at = 0.0

    def __call__(self, phase: Phase) -> None:
        now = time.monotonic()
        key = (phase.name, phase.step)
        if key == self._last and now - self._sent_at < POST_INTERVAL_S and phase.done < phase.total:
            return
        if not self._looked:
            self._looked = True
            try:
                self._board = ray.get_actor(board_name(self.study_name), namespace=NAMESPACE)
            except ValueError:
                self._board = None  # a driver without a board: nothing to post to
        if self._board is not None:
            self._board.post_phase.remote(self.trial_id, {**asdict(phase), "at": time.time()})
        self._last, self._sent_at = key, now

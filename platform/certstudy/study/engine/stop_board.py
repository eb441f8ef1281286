"""The study's board: how a prune decision taken on the driver reaches the running trial, and
where each running trial posts its phase for the live view (``study/engine/progress_board.py``).

Ray Tune can only kill a trial (``STOP``), and a killed trial cannot finish on its best epoch
(test metrics, certificates and weights of that epoch). So the scheduler posts the decision on a
small named actor (no CPU, owned by the driver, one per study) before letting the trial continue;
the trial reads it right after ``tune.report`` returns. Function trainables block in
``tune.report`` until the driver has processed that result, and ``post_stop`` waits for the actor,
so the request is always there when the trial looks.
"""

from __future__ import annotations

from typing import Any

import ray

NAMESPACE = "certstudy"


@ray.remote(num_cpus=0)
class StopBoard:
    def __init__(self) -> None:
        self._requests: dict[str, tuple[str, int]] = {}
        self._delivered: set[str] = set()
        self._phases: dict[str, dict[str, Any]] = {}  # trial id -> its latest phase (certstudy.phases)

    def post(self, trial_id: str, reason: str, epoch: int) -> bool:
        """Posts a request; True when an earlier one was already read (the trial went on anyway)."""
        self._requests.setdefault(trial_id, (reason, epoch))
        return trial_id in self._delivered

    def read(self, trial_id: str) -> tuple[str, int] | None:
        request = self._requests.get(trial_id)
        if request is not None:
            self._delivered.add(trial_id)
        return request

    def post_phase(self, trial_id: str, phase: dict[str, Any]) -> None:
        self._phases[trial_id] = phase

    def phases(self) -> dict[str, dict[str, Any]]:
        return dict(self._phases)


def board_name(study: str) -> str:
    return f"certstudy-stops-{study}"


# The driver keeps the creating handle: Ray ends an actor once its owner's handles are gone (a
# handle found by name does not count). Keyed by the driver's node and job: one process may start
# Ray more than once (two studies in a row, tests), and a fresh Ray numbers its jobs from 1 again,
# so the job id alone would hand a later study the dead board of an earlier one.
_HANDLES: dict[tuple[str, str, str], Any] = {}


def open_board(study: str) -> Any:
    """The study's board, created on first use (by the driver: it owns it, it dies with it)."""
    context = ray.get_runtime_context()
    key = (study, context.get_node_id(), context.get_job_id())
    if key not in _HANDLES:
        _HANDLES[key] = StopBoard.options(
            name=board_name(study), namespace=NAMESPACE, get_if_exists=True, lifetime=None
        ).remote()  # type: ignore[attr-defined]
    return _HANDLES[key]


def post_stop(study: str, trial_id: str, reason: str, epoch: int) -> bool:
    return bool(ray.get(open_board(study).post.remote(trial_id, reason, epoch)))


class BoardReader:
    """The trial's side: reads its own request after each report (the handle is looked up once)."""

    def __init__(self, study: str) -> None:
        self.study_name = study
        self._board: Any = None

    def read(self, trial_id: str) -> tuple[str, int] | None:
        if self._board is None:
            try:
                self._board = ray.get_actor(board_name(self.study_name), namespace=NAMESPACE)
            except ValueError:
                return None  # no decision was ever posted in this study
        return ray.get(self._board.read.remote(trial_id))

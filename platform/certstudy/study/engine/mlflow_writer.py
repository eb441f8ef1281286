"""The MLflow writer of a study's driver: one thread that makes the MLflow calls in order, retries
through an outage of the tracking store and stops the study on a full disk.

Ray's function trainables wait, at every ``tune.report``, until the driver has processed the
previous result, and on a small machine the driver's CPU time is taken from the trials. The
callback's hooks therefore only enqueue (``submit``); this thread does the calls and, every
``FLUSH_SECONDS``, the ``periodic`` one (writing buffered metrics). A transient error (the store
unreachable, overloaded or locked) is retried every ``RETRY_SECONDS`` with a warning every
``WARN_SECONDS``, until the study's ``tracking.unreachable_wait_s`` has passed: ``fatal`` then says
why the study stops. ``flush()`` waits until everything queued is written.
"""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from certstudy.errors import CertstudyError, collapse
from certstudy.study.engine.disk_full_stop import request_stop

logger = logging.getLogger(__name__)


class TrackingUnreachable(CertstudyError):
    """The tracking store stayed unreachable longer than the study allows; the study stops."""


TRANSIENT = ("connection", "max retries exceeded", "timed out", "timeout", "database is locked", "503", "502", "504")


def transient(exc: BaseException) -> bool:
    """An error a later retry may not meet: the store unreachable, overloaded or locked."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError)) or any(t in str(seen).lower() for t in TRANSIENT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class MlflowWriter:
    """Runs submitted calls on one thread, in order (see the module docstring). ``periodic`` is
    called before any other call and every ``FLUSH_SECONDS``; a call to ``buffering`` is made once
    even when retried (a retry only runs ``periodic``), so a buffered write never doubles."""

    FLUSH_SECONDS = 2.0
    RETRY_SECONDS = 2.0
    WARN_SECONDS = 30.0

    def __init__(
        self,
        study: str,
        tracking_uri: str,
        unreachable_wait_s: float,
        periodic: Callable[[], None],
        buffering: Callable[..., None],
        backlog: Callable[[], int],
    ) -> None:
        self.study_name, self.tracking_uri, self.unreachable_wait_s = study, tracking_uri, unreachable_wait_s
        self.periodic, self.buffering, self.backlog = periodic, buffering, backlog
        self.fatal: str | None = None  # set when the store stayed unreachable too long: the study stops
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._last_flush = 0.0
        self._down_since: float | None = None  # when the tracking store stopped answering
        self._warned = 0.0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="certstudy-mlflow", daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def flush(self) -> None:
        """Waits until every queued call is done, and ``periodic`` after them."""
        if self._thread is not None:
            self.submit(self.periodic)
            self._queue.join()

    def _drain(self) -> None:
        self._last_flush = time.monotonic()
        while True:
            try:
                fn, args = self._queue.get(timeout=self.FLUSH_SECONDS)
            except queue.Empty:
                fn, args = None, ()
            try:
                step, step_args = fn, args
                while True:  # an unreachable store is retried; anything else is a warning and skipped
                    try:
                        self._step(step, step_args)
                        self._reachable_again()
                        break
                    except Exception as exc:  # noqa: BLE001 - tracking must not take the study down
                        if request_stop(self.study_name, exc, "the MLflow tracking store"):
                            break  # disk full: the study stops, and resume back-fills from result.json
                        if not transient(exc):
                            logger.warning("MLflow write failed (%s): %s", getattr(fn, "__name__", fn), exc)
                            break
                        if not self._unreachable(exc):
                            break
                        if step == self.buffering:
                            step, step_args = None, ()  # buffered once: a retry only flushes (no twin rows)
                        time.sleep(self.RETRY_SECONDS)
            finally:
                if fn is not None:
                    self._queue.task_done()

    def _step(self, fn: Callable[..., Any] | None, args: tuple[Any, ...]) -> None:
        if self.fatal is not None and fn != self.buffering:
            return  # the study is stopping: nothing more reaches MLflow (resume back-fills the epochs)
        if fn is not None and fn != self.buffering:
            self.periodic()  # keep MLflow calls in the order they were made
        if fn is not None:
            fn(*args)
        if time.monotonic() - self._last_flush >= self.FLUSH_SECONDS:
            self.periodic()
            self._last_flush = time.monotonic()

    def _backlog(self) -> int:
        return self._queue.qsize() + self.backlog()

    def _unreachable(self, exc: BaseException) -> bool:
        """An outage: warn (every ``WARN_SECONDS``) while results stay buffered; True to retry, False
        (and ``fatal`` set) once the study's ``tracking.unreachable_wait_s`` has passed."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since, self._warned = now, -math.inf
        wait = self.unreachable_wait_s
        left = wait - (now - self._down_since)
        if left <= 0:
            self.fatal = (
                f"tracking server {self.tracking_uri} unreachable for {wait:.0f} s ({self._backlog()} results not "
                f"recorded); the study stopped: certstudy resume {self.study_name} once it is back"
            )
            return False
        if now - self._warned >= self.WARN_SECONDS:
            self._warned = now
            sys.stderr.write(
                f"warning: tracking server unreachable ({self.tracking_uri}; {collapse(str(exc), 120)}), "
                f"{self._backlog()} results buffered, retrying (for {left:.0f} s more)\n"
            )
        return True

    def _reachable_again(self) -> None:
        if self._down_since is not None:
            sys.stderr.write(
                f"tracking server reachable again after {time.monotonic() - self._down_since:.0f} s; "
                f"delivering the buffered results\n"
            )
            self._down_since = None

"""Stopping a study whose work directory's filesystem is full, so that ``resume`` can finish it.

Whichever part of the driver meets an out-of-space error first calls ``request_stop``: the
scheduler (a trial whose checkpoint upload failed reaches Ray Tune as the trial's error), the
searcher (an Optuna write) or the MLflow writer. The study then stops the way a Ctrl-C stops it:
Ray Tune's graceful stop, every unfinished trial left to resume from its last checkpoint. While
the study stops, an error is not the trial's failure (``stopping``): Optuna is not told FAIL, the
MLflow run ends KILLED like an interrupted one, and ``launch`` / ``resume`` end with one line and
exit 1 (``DiskFull``). After space is freed, ``certstudy resume`` continues the trials and
back-fills into MLflow the epochs that Ray recorded in the trial folders but MLflow could not take.

The state is per driver process and per study, outside the scheduler and searcher, because those
are pickled into Ray Tune's experiment state and a stop request must not outlive the process.
"""

from __future__ import annotations

import logging
import signal
import threading

from certstudy.errors import DiskFull, disk_full_cause

_reasons: dict[str, str] = {}
_lock = threading.Lock()


def request_stop(study: str, exc: BaseException | str, writing: str) -> bool:
    """Stops ``study`` (once) when ``exc`` is an out-of-space error met ``writing`` something (the
    first such is named in the one-line error); True when it is one.

    The stop is Ray Tune's own Ctrl-C handling, reached with a SIGINT to this process, and only
    while Ray Tune's handler is installed (inside ``Tuner.fit``): outside it, the caller's
    ``DiskFull`` check after the work (``raise_if_stopped``) ends the study."""
    cause = disk_full_cause(exc if isinstance(exc, BaseException) else RuntimeError(exc))
    if cause is None:
        return False
    with _lock:
        if study in _reasons:
            return True
        _reasons[study] = writing
    if signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, signal.SIG_DFL, signal.SIG_IGN, None):
        signal.raise_signal(signal.SIGINT)  # Ray Tune's handler: finish the step, save, stop
    return True


class QuietDiskFullLogs(logging.Filter):
    """Drops the libraries' log records (tracebacks, mostly) about a full disk, and Ray Tune's
    records while a study stops for one: the one-line ``DiskFull`` error says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _reasons and record.name.startswith("ray.tune"):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and disk_full_cause(exc) is not None:
            return False
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return True
        return disk_full_cause(RuntimeError(message)) is None


def quiet_disk_full_logs() -> None:
    """Installs ``QuietDiskFullLogs`` on the handlers of the libraries' loggers (and the root's)."""
    for name in ("", "ray", "ray.tune", "mlflow"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, QuietDiskFullLogs) for f in handler.filters):
                handler.addFilter(QuietDiskFullLogs())


def stopping(study: str) -> bool:
    """The study is stopping for a full disk: an error now is an interruption, not a failure."""
    return study in _reasons


def raise_if_stopped(study: str, where: str) -> None:
    """Ends the study with ``DiskFull`` (one line, exit 1) if a stop was requested; clears it."""
    with _lock:
        reason = _reasons.pop(study, None)
    if reason is not None:
        raise DiskFull(
            f"disk full: no space left on the device of {where} (first met writing {reason}); the study stopped "
            f"with its trials resumable: free space there, then certstudy resume {study}"
        )


def clear(study: str) -> None:
    with _lock:
        _reasons.pop(study, None)

"""Errors that the CLI turns into one line and exit code 2 (bad input) or 1 (a run failed)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ERROR_LINE_LIMIT = 400
"""The longest error line the CLI prints; longer ones lose their middle (long values elided)."""


class CertstudyError(Exception):
    """Base class: the message is already one line a user can act on."""

    exit_code = 1


class SpecError(CertstudyError):
    """A study file (or other user input) is invalid; nothing has been started."""

    exit_code = 2

    def __init__(self, source: str, field: str, value: object, allowed: str) -> None:
        self.source, self.field, self.value, self.allowed = source, field, value, allowed
        source_text, allowed_text = elide_middle(source, 120), elide_middle(allowed, 200)
        room = max(40, ERROR_LINE_LIMIT - 20 - len(source_text) - len(allowed_text))  # for the field and the value
        field_text = elide_middle(field, max(20, room * 3 // 5)) if field else ""
        shown = _short(value, max(20, min(80, room - len(field_text))))
        where = f"{source_text}: {field_text}" if field else source_text
        super().__init__(f"{where}: got {shown}; {allowed_text}")


class TrialFailed(CertstudyError):
    """A trial cannot go on (diverged loss, unusable data); the study records it as FAILED."""


class DiskFull(CertstudyError):
    """The work directory's filesystem (or a store on it) ran out of space: the study stops where it
    is, and ``certstudy resume`` continues it once space is freed."""


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# sqlite's SQLITE_FULL, as its Python driver words it (MLflow, Optuna and SQLAlchemy wrap it).
SQLITE_FULL = "database or disk is full"


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """The out-of-space error behind ``exc`` (itself or anything in its cause/context chain,
    however MLflow, Optuna, SQLAlchemy or Ray wrapped it), or None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DiskFull):
            return e
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return e
        if SQLITE_FULL in str(e) or "No space left on device" in str(e):
            return e
        todo += [e.__cause__, e.__context__]
    return None


def disk_full_message(exc: BaseException, where: str, then: str = "run the command again") -> str | None:
    """One line for an out-of-space failure behind ``exc`` (None when it was something else);
    ``then`` says what to do once space is freed."""
    cause = disk_full_cause(exc)
    if cause is None:
        return None
    what = getattr(cause, "filename", None)
    return collapse(
        f"disk full: no space left on the device of {where}"
        + (f" (writing {what})" if what else "")
        + f"; free space there, then {then}"
    )


@contextmanager
def stops_on_disk_full(where: str, then: Callable[[], str]) -> Iterator[None]:
    """Turns an out-of-space failure inside the block into ``DiskFull`` with one line; ``then()``,
    called at the failure, says what to do once space is freed."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        message = disk_full_message(exc, where, then())
        if message is None:
            raise
        raise DiskFull(message) from None


def collapse(text: str, limit: int = 500) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def elide_middle(text: str, limit: int) -> str:
    """``text`` on one line, its middle replaced by `` ... `` when longer than ``limit`` characters
    (the head names the file and field, the tail says what is allowed)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = (limit - 5) * 3 // 5
    return f"{text[:head]} ... {text[len(text) - (limit - 5 - head) :]}"


def one_line(exc: BaseException, limit: int = 500) -> str:
    return collapse(f"{type(exc).__name__}: {exc}", limit)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

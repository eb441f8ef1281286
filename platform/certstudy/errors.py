"""Errors that the CLI turns into one line and exit code 2 (bad input) or 1 (a run failed)."""

from __future__ import annotations


class CertstudyError(Exception):
    """Base class: the message is already one line a user can act on."""

    exit_code = 1


class SpecError(CertstudyError):
    """A study file (or other user input) is invalid; nothing has been started."""

    exit_code = 2

    def __init__(self, source: str, field: str, value: object, allowed: str) -> None:
        self.source, self.field, self.value, self.allowed = source, field, value, allowed
        shown = _short(value)
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: got {shown}; {allowed}")


class TrialFailed(CertstudyError):
    """A trial cannot go on (diverged loss, unusable data); the study records it as FAILED."""


def collapse(text: str, limit: int = 500) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(exc: BaseException, limit: int = 500) -> str:
    return collapse(f"{type(exc).__name__}: {exc}", limit)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

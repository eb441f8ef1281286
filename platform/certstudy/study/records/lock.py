"""One study per folder at a time, and a work directory's stores initialised by one process at a time.

``launch`` and ``resume`` hold an exclusive ``flock`` on ``<workdir>/.locks/<study>.lock`` for as long
as they run; a second ``launch`` or ``resume`` of that study is refused with one line naming the
process that holds it. The kernel drops the lock when its holder exits, however it exits (SIGKILL
included), so a lost driver never leaves a stale lock behind for ``resume`` to trip on. The file
records the holder's pid and command line (any URL's secrets masked); it is never deleted (deleting a lock file races a
process that has just opened it).

``store_setup`` (on ``.locks/.stores.lock``: no study name starts with a dot) serialises what
two launches racing on a new work directory would otherwise do at once: create ``mlflow.db``, run
MLflow's schema migrations on it, and create the experiment.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from certstudy.errors import CertstudyError
from certstudy.url_secrets import redacted_argv
from certstudy.workdir import Workdir

LOCKS_DIR = ".locks"


def _lock_path(workdir: Workdir, name: str) -> Path:
    folder = workdir.root / LOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.lock"


class StudyBusy(CertstudyError):
    """Another process runs this study in this work directory."""


class StudyLock:
    """Held by ``launch`` / ``resume`` for one study of one work directory (a context manager)."""

    def __init__(self, workdir: Workdir, study: str) -> None:
        self.workdir, self.study_name = workdir, study
        self.fd: int | None = None

    def __enter__(self) -> StudyLock:
        path = _lock_path(self.workdir, self.study_name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise StudyBusy(
                f"study {self.study_name!r} is already running in {self.workdir.root} ({holder}); wait for it to end, "
                f"or stop that process first"
            ) from None
        os.ftruncate(fd, 0)
        command = " ".join(["certstudy", *redacted_argv(sys.argv[1:])])[:200]
        os.pwrite(fd, f"pid {os.getpid()}: {command}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def running_holder(workdir: Workdir, study: str) -> str | None:
    """The live process that holds ``study``'s lock, as its lock file names it, or None. Read-only:
    no lock is taken (a probe could make a launch starting at that instant refuse), so it reads
    the recorded pid and asks the kernel whether that process still runs certstudy."""
    path = workdir.root / LOCKS_DIR / f"{study}.lock"
    try:
        holder = path.read_text(errors="replace").strip()
        pid = int(holder.split(":", 1)[0].removeprefix("pid "))
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return holder if b"certstudy" in command else None


def running_studies(workdir: Workdir) -> list[str]:
    """The studies of ``workdir`` that a live certstudy process runs now (``running_holder``)."""
    folder = workdir.root / LOCKS_DIR
    names = sorted(p.stem for p in folder.glob("*.lock") if not p.name.startswith(".")) if folder.is_dir() else []
    return [name for name in names if running_holder(workdir, name)]


@contextmanager
def store_setup(workdir: Workdir) -> Iterator[None]:
    """Blocks until no other certstudy process is setting up this work directory's stores."""
    fd = os.open(_lock_path(workdir, ".stores"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock

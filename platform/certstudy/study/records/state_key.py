"""The user's state key: the secret that authenticates the Ray Tune state a resume unpickles.

It lives outside every work directory, in ``$CERTSTUDY_STATE_KEY`` when set, else
``$XDG_CONFIG_HOME/certstudy/state.key`` (``~/.config/certstudy/state.key``), is created on first
use with 32 random bytes (hex), mode 0600 in a 0700 folder, and is refused when another user owns
it, when group or others may read or write it, when it is not a regular file (a symlink, a FIFO),
or when it lies inside the work directory it would guard. Only the machine that runs the study
driver needs it (the digests are made and checked there).
"""

from __future__ import annotations

import os
import secrets
import stat
from functools import lru_cache
from pathlib import Path

from certstudy.errors import CertstudyError

ENV_VAR = "CERTSTUDY_STATE_KEY"
KEY_BYTES = 32


class StateKeyError(CertstudyError):
    """The state key is missing its protections; nothing has been started."""

    exit_code = 2


def key_path() -> Path:
    """Where the state key is (it need not exist yet)."""
    chosen = os.environ.get(ENV_VAR)
    if chosen:
        return Path(chosen).expanduser().absolute()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser().absolute() / "certstudy" / "state.key"


def state_key() -> bytes:
    """The key, created on first use; one-line ``CertstudyError`` naming the file when it is unsafe."""
    return _load(key_path())


def check_outside(workdir: Path) -> None:
    """Refuses a state key kept inside ``workdir``: write access there would then reach the key too."""
    path = key_path().resolve()
    if path.is_relative_to(workdir.resolve()):
        raise StateKeyError(
            f"{path}: the state key lies inside the work directory {workdir}, where whoever can write the "
            f"study folders could read it; set ${ENV_VAR} to a path outside it"
        )


@lru_cache(maxsize=4)
def _load(path: Path) -> bytes:
    if not os.path.lexists(path):
        _create(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise StateKeyError(
            f"{path}: the state key cannot be opened ({exc.strerror}); it must be a regular file"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateKeyError(f"{path}: the state key is not a regular file")
        if info.st_uid != os.geteuid():
            raise StateKeyError(f"{path}: the state key belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o077:
            raise StateKeyError(
                f"{path}: the state key is readable or writable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                f"run chmod 600 on it"
            )
        text = os.read(fd, 2 * KEY_BYTES + 2).strip()
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise StateKeyError(f"{path}: not a certstudy state key ({2 * KEY_BYTES} hex digits expected)")
    return key


def _create(path: Path) -> None:
    """Writes a fresh key whole: a private temporary file hard-linked into place, so a concurrent
    first use reads either no key or the complete one, and the first writer wins."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, secrets.token_hex(KEY_BYTES).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()

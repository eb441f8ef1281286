"""Ray for a study: this machine's own, reachable from it only, or a cluster that answers.

Without ``--address`` a study starts its own single-node Ray and never joins one it finds
(``address="local"``: neither ``$RAY_ADDRESS`` nor the last ``ray start`` on the machine is used),
with every listening socket on the loopback interface and token authentication from a token file
of the work directory (mode 0600).

Loopback binding: Ray's servers (GCS, raylet, core workers) and its agents bind to ``127.0.0.1``
exactly when the node's IP is the loopback address, and to every interface otherwise; the node is
started with that IP (``ray_compat.init_local``). ``tests/test_local_ray.py`` lists the sockets of
a running study.

Token: Ray turns token authentication on for a local cluster and reads the token from
``$RAY_AUTH_TOKEN_PATH``, else writes ``~/.ray/auth_token`` world-readable; certstudy points it at
``<workdir>/.ray/auth_token``, created 0600 once and kept so.

Fast start (all on unless ``CERTSTUDY_RAY_FAST_START`` says otherwise; ``bench/fixed_cost.py`` measures it): a
local study needs neither of the head's two Python helpers (the API server, which ``ray.init``
waits for, and the autoscaler monitor), so the head starts without them; the raylet's prestarted
workers import the trial module while the driver sets up; and Ray Tune starts its actors without
a runtime environment (the workers inherited Tune's variables from the driver), so that the
actors can take those prestarted workers. The node offers the CPUs the study's concurrent trials
use, at most the machine's (``study_cpus``), so no worker preloads for a trial that never runs.
Without the fast start the node is Ray's default head on the loopback interface.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import IO, TYPE_CHECKING

import ray

from certstudy.errors import CertstudyError, SpecError
from certstudy.study.engine.ray_compat import (
    TOKEN_SETUP_LOGGER,
    TUNE_ACTOR_ENV,
    fast_start,
    forget_cached_token,
    init_local,
    lean_head,
    tune_actors_without_env,
)
from certstudy.workdir import Workdir

if TYPE_CHECKING:
    from certstudy.study.spec.schema import StudySpec

TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


def token_file(workdir: Workdir) -> Path:
    """The work directory's Ray token, created 0600 (never readable by other users) when missing."""
    path = workdir.root / ".ray" / "auth_token"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return path
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


TRIAL_MODULE = "certstudy.study.engine.trainable"  # what every trial worker imports first (torch, Ray Tune, the loop)


def _workers_inherit_env() -> None:
    """Sets Tune's per-actor variables in this process, so the local raylet started next and every
    worker it starts have them (module docstring). Light: Ray Tune is not imported here."""
    for key, value in TUNE_ACTOR_ENV.items():
        os.environ.setdefault(key, value)


def _use_token_path(value: str | None) -> None:
    """Sets (or, with None, removes) ``$RAY_AUTH_TOKEN_PATH`` and drops the token Ray has cached."""
    if value is None:
        os.environ.pop(TOKEN_PATH_ENV, None)
    else:
        os.environ[TOKEN_PATH_ENV] = value
    forget_cached_token()


def study_cpus(spec: StudySpec) -> int:
    """CPUs a local node offers a study: what its trials use at their most concurrent, at most the
    machine's (a trial that asks for more than the machine has is refused by the preflight)."""
    concurrent = min(spec.search.num_trials, spec.search.max_concurrent)
    return max(1, min(os.cpu_count() or 1, math.ceil(spec.resources.cpu * concurrent)))


class RayConnection:
    """This process's Ray for one study: a local node it started, or a cluster it joined. Whoever
    holds it closes it (the study's session, once handed over); ``close`` is idempotent. A local node
    brings the token path and Ray Tune's actor environment it set; closing gives them back, so a
    later study in this process may join a cluster with that cluster's token."""

    def __init__(self) -> None:
        self._undo = ExitStack()
        self.open = True

    def on_close(self, fn: Callable[..., object], *args: object) -> None:
        """``fn(*args)`` when the connection closes (after Ray has shut down), last registered first."""
        self._undo.callback(fn, *args)

    def hold(self, context: AbstractContextManager[object]) -> None:
        """Enters ``context`` now and leaves it when the connection closes."""
        self._undo.enter_context(context)

    def close(self) -> None:
        if self.open:
            self.open = False
            try:
                ray.shutdown()
            finally:
                self._undo.close()


def _token_path_for(connection: RayConnection, path: Path) -> None:
    """``$RAY_AUTH_TOKEN_PATH`` is ``path`` until ``connection`` closes, then what it was."""
    saved = os.environ.get(TOKEN_PATH_ENV)
    _use_token_path(str(path))
    connection.on_close(_use_token_path, saved)


def start_local_ray(workdir: Workdir, verbose: bool, cpus: int | None = None) -> RayConnection:
    """This machine's own Ray for one study (see the module docstring), offering ``cpus`` CPUs
    (default: the machine's)."""
    connection = RayConnection()
    if not verbose:  # its "token authentication is enabled ... to opt out" is certstudy's choice, not news
        logging.getLogger(TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)
    try:
        fast = fast_start()
        _token_path_for(connection, token_file(workdir))
        if "actor_env" in fast:
            _workers_inherit_env()
        with lean_head() if "lean_head" in fast else nullcontext():
            init_local(
                cpus,
                (TRIAL_MODULE,) if "preload" in fast else (),
                include_dashboard=False,
                log_to_driver=verbose,
                logging_level="INFO" if verbose else "WARNING",
            )
        if "actor_env" in fast:
            connection.hold(tune_actors_without_env())
    except BaseException:
        connection.close()
        raise
    return connection


ADDRESS_TIMEOUT_S = 20.0


def join_cluster(address: str, verbose: bool) -> RayConnection:
    """Connects to the Ray cluster at ``address`` (``auto`` or HOST:PORT). A HOST:PORT that accepts
    no TCP connection within ``ADDRESS_TIMEOUT_S`` is a one-line error (``ray.init`` itself would
    retry for minutes)."""
    if address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise SpecError("--address", "", address, "give HOST:PORT of the cluster's head (or auto)")
        deadline = time.monotonic() + ADDRESS_TIMEOUT_S
        while True:
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                    break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise CertstudyError(
                        f"--address {address}: no Ray cluster answers there after {ADDRESS_TIMEOUT_S:.0f} s "
                        f"({exc.strerror or exc}); is its head running (ray start --head)?"
                    ) from None
                time.sleep(1)
    with _captured_stderr() as captured:
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=verbose,
                logging_level="INFO" if verbose else "WARNING",
            )
        except Exception:
            said = captured.read()
            if any(sign in said for sign in TOKEN_REFUSED):
                raise SpecError(
                    "--address",
                    "",
                    address,
                    "the cluster refused this driver's token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to the "
                    "cluster's token file (README: Running on a cluster)",
                ) from None
            sys.stderr.write(said)
            raise
        if verbose:
            sys.stderr.write(captured.read())
    return RayConnection()


TOKEN_REFUSED = ("InvalidAuthToken", "Authentication token is missing or incorrect")


@contextmanager
def _captured_stderr() -> Iterator[_Rewound]:
    """The process's file descriptor 2 into a temporary file for the block (Ray's core logs its
    connection retries there, a line a second, from C++), readable afterwards from the start."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+", errors="replace") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield _Rewound(sink)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _Rewound:
    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def read(self) -> str:
        self.fh.flush()
        self.fh.seek(0)
        return self.fh.read()

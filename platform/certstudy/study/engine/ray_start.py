"""Ray for a study: this machine's own, reachable from it only, or a cluster that answers.

Without ``--address`` a study starts its own single-node Ray and never joins one it finds
(``address="local"``: neither ``$RAY_ADDRESS`` nor the last ``ray start`` on the machine is used),
with every listening socket on the loopback interface and token authentication from a token file
of the work directory (mode 0600).

Loopback binding: Ray's C++ servers (GCS, raylet, core workers) and its agents bind to
``127.0.0.1`` exactly when the node's IP is the loopback address, and to every interface
otherwise; ``ray.init`` rewrites a loopback ``_node_ip_address`` to the machine's routable address
(``ray._private.services.resolve_ip_for_localhost``, made for clusters). That one rewrite is
switched off while the local node starts; ``tests/test_ray_contract.py`` guards the names this
relies on, and ``tests/test_local_ray.py`` lists the sockets of a running study.

Token: Ray 2.60 turns token authentication on for a local cluster and reads the token from
``$RAY_AUTH_TOKEN_PATH``, else writes ``~/.ray/auth_token`` world-readable; certstudy points it at
``<workdir>/.ray/auth_token``, created 0600 once and kept so.

Start-up cost (2 cores, measured): a local node is the GCS, the raylet with its agents, and, on
the head, two Python processes a study never uses: the API server (started even with
``include_dashboard=False``, to run the usage-stats module; ``ray.init`` waits until it has
published its URL, about 1.2 s) and the autoscaler monitor (nothing to scale on one machine;
it takes about 1 s to stop at shutdown). A local study's node starts without both
(``Node.start_api_server`` / ``Node.start_monitor`` are skipped while it starts), so ``ray.init``
takes about 2.4 s instead of 4 and ``ray.shutdown`` 0.15 s instead of 1.2. Its workers preload the
trial module (``preload_python_modules``: torch, Ray Tune's function trainable, the trial loop):
the raylet prestarts one worker per CPU at start-up, the first trials' actors take those workers,
and their 2.2 s of imports overlap the driver's set-up instead of following it. The node offers
the CPUs the study's concurrent trials use, at most the machine's (``study_cpus``): the raylet
prestarts one worker per CPU it offers, and on 2 cores a second worker preloading for a study that
runs one trial at a time took the CPU the first one needed. A prestarted
worker serves only actors without a runtime environment, and Ray Tune gives each trainable
actor one of environment variables (``PL_DISABLE_FORK=1`` and those of the driver it
propagates); on a local node the raylet, started by the driver after those variables are set,
passes the same environment to every worker, so while the node runs Tune adds none
(``_tune_adds_no_actor_env``) and the actors land on the warm workers (0.25 s to a ready actor
instead of 2.5 s).
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

import ray
import ray._private.node as ray_node
import ray._private.services as ray_services
from ray._raylet import AuthenticationTokenLoader

from certstudy.errors import CertstudyError, SpecError
from certstudy.workdir import Workdir

if TYPE_CHECKING:
    from certstudy.study.spec.schema import StudySpec

LOOPBACK = "127.0.0.1"
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


@contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """``ray.init`` keeps a loopback ``_node_ip_address`` instead of replacing it (see the module docstring)."""
    original = ray_services.resolve_ip_for_localhost
    ray_services.resolve_ip_for_localhost = lambda host: host
    try:
        yield
    finally:
        ray_services.resolve_ip_for_localhost = original


TRIAL_MODULE = "certstudy.study.engine.trainable"  # what every trial worker imports first (torch, Ray Tune, the loop)


@contextmanager
def _lean_head() -> Iterator[None]:
    """The local head starts without the API server and the autoscaler monitor (module docstring)."""
    node_class = ray_node.Node
    originals = node_class.start_api_server, node_class.start_monitor
    node_class.start_api_server = lambda self, **_: None  # type: ignore[method-assign]
    node_class.start_monitor = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        node_class.start_api_server, node_class.start_monitor = originals  # type: ignore[method-assign]


TUNE_ACTOR_ENV = {"PL_DISABLE_FORK": "1"}  # Ray Tune's DEFAULT_ENV_VARS (tests/test_ray_contract.py)
_tune_defaults: tuple[dict[str, str], frozenset[str]] | None = None  # Tune's own, while a local node runs


def _workers_inherit_env() -> None:
    """Sets Tune's per-actor variables in this process, so the local raylet started next and every
    worker it starts have them (module docstring). Light: Ray Tune is not imported here."""
    for key, value in TUNE_ACTOR_ENV.items():
        os.environ.setdefault(key, value)


def _tune_adds_no_actor_env() -> None:
    """Has Ray Tune give its actors no runtime environment (their workers inherited it)."""
    global _tune_defaults
    from ray.tune.execution import class_cache

    if _tune_defaults is None:
        _tune_defaults = dict(class_cache.DEFAULT_ENV_VARS), frozenset(class_cache.ENV_VARS_TO_PROPAGATE)
    class_cache.DEFAULT_ENV_VARS = {}
    class_cache.ENV_VARS_TO_PROPAGATE = frozenset()


def _tune_sets_actor_env() -> None:
    global _tune_defaults
    if _tune_defaults is not None:
        from ray.tune.execution import class_cache

        class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE = dict(_tune_defaults[0]), _tune_defaults[1]
        _tune_defaults = None


_UNSET = object()
_saved_token_path: object = _UNSET  # the caller's $RAY_AUTH_TOKEN_PATH while a local Ray runs


def _use_token_path(value: str | None) -> None:
    """Sets (or, with None, removes) ``$RAY_AUTH_TOKEN_PATH`` and drops the token Ray has cached."""
    if value is None:
        os.environ.pop(TOKEN_PATH_ENV, None)
    else:
        os.environ[TOKEN_PATH_ENV] = value
    AuthenticationTokenLoader.instance().reset_cache()


TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


def study_cpus(spec: StudySpec) -> int:
    """CPUs a local node offers a study: what its trials use at their most concurrent, at most the
    machine's (a trial that asks for more than the machine has is refused by the preflight)."""
    concurrent = min(spec.search.num_trials, spec.search.max_concurrent)
    return max(1, min(os.cpu_count() or 1, math.ceil(spec.resources.cpu * concurrent)))


def start_local_ray(workdir: Workdir, verbose: bool, cpus: int | None = None) -> None:
    """This machine's own Ray for one study (see the module docstring), offering ``cpus`` CPUs
    (default: the machine's); ``stop_ray`` ends it."""
    global _saved_token_path
    _saved_token_path = os.environ.get(TOKEN_PATH_ENV)
    _use_token_path(str(token_file(workdir)))
    if not verbose:  # its "token authentication is enabled ... to opt out" is certstudy's choice, not news
        logging.getLogger(TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)
    try:
        _workers_inherit_env()
        with _loopback_node_ip(), _lean_head():
            ray.init(
                address="local",
                num_cpus=cpus,
                _node_ip_address=LOOPBACK,
                _system_config={"preload_python_modules": [TRIAL_MODULE]},
                include_dashboard=False,
                log_to_driver=verbose,
                logging_level="INFO" if verbose else "WARNING",
            )
        _tune_adds_no_actor_env()
    except BaseException:
        stop_ray()
        raise


ADDRESS_TIMEOUT_S = 20.0


def join_cluster(address: str, verbose: bool) -> None:
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


def stop_ray() -> None:
    """Disconnects from Ray (shutting down a local one) and gives the process back its own token
    setting (a later study in this process may join a cluster, with that cluster's token)."""
    global _saved_token_path
    ray.shutdown()
    _tune_sets_actor_env()
    if _saved_token_path is not _UNSET:
        _use_token_path(_saved_token_path)  # type: ignore[arg-type]
        _saved_token_path = _UNSET

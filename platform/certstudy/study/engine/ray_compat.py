"""Every touch of a Ray or Optuna private name, and every library attribute certstudy patches.

Nothing else in the package reaches past Ray's and Optuna's public APIs. Each name here is pinned
by a behavioural contract test in ``tests/test_ray_contract.py``: the test calls the library and
checks the effect certstudy relies on, so an upgrade that changes the behaviour fails there and
one that only reformats the library's source passes. Why no public API does each job in Ray 2.60
and Optuna 5 is said beside it. Patches are installed for a block and removed after it.

- A local study's node on the loopback interface: ``ray.init`` has no public way to keep a
  ``_node_ip_address`` of 127.0.0.1 (it rewrites a loopback address to the machine's routable one
  through ``ray._private.services.resolve_ip_for_localhost``), and the node's IP decides where Ray's
  servers bind.
- The cached token: Ray reads ``$RAY_AUTH_TOKEN_PATH`` once per process; a process that starts its
  own Ray after joining a cluster (or the reverse) must make it read the variable again
  (``AuthenticationTokenLoader.reset_cache``).
- The optional fast start (``FAST_START_ENV``): a head without the API server and autoscaler
  monitor (``Node.start_api_server`` / ``start_monitor``), workers that preload the trial module
  (``_system_config["preload_python_modules"]``), and Tune actors without a runtime environment
  (``class_cache.DEFAULT_ENV_VARS`` / ``ENV_VARS_TO_PROPAGATE``) so they land on those workers.
- Ray Tune's experiment state: its syncer's upload (``_FilesystemSyncer._sync_up_command``) and the
  checkpoint manager's deletion (``checkpoint_manager._delete_fs_path``) are replaced while a study
  runs, so a local experiment folder is written by renames and old checkpoints outlive the state
  that names them (``study/engine/atomic_sync.py``). Ray exposes no syncer hook for local storage.
- A trial's retry count (``Trial.run_metadata.num_failures``): Ray's ``Callback`` hooks receive the
  ``Trial`` but no public accessor of its failures.
- Optuna: a handle on a trial that is still running but was asked in another process (a restored
  driver's trials). ``optuna.trial.Trial(study, trial_id)`` is public, the storage's trial id of a
  trial number is not (``FrozenTrial._trial_id``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna

from certstudy.errors import SpecError

LOOPBACK = "127.0.0.1"
TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
"""The logger of Ray's "token authentication is enabled" warning, which a local study silences."""

FAST_START_ENV = "CERTSTUDY_RAY_FAST_START"
"""The fast start's parts for a local study's node: unset or ``1``, all of ``FAST_START_PARTS``;
``0``, none (a Ray upgrade can run without them); else a comma-separated list of parts. A cluster
joined with ``--address`` never uses them."""

FAST_START_PARTS = ("lean_head", "preload", "actor_env")


TUNE_ACTOR_ENV = {"PL_DISABLE_FORK": "1"}
"""What Ray Tune gives each trainable actor as its runtime environment (``class_cache.DEFAULT_ENV_VARS``);
a fast-started node's workers inherit it from the driver instead."""


def fast_start() -> frozenset[str]:
    """The fast start's parts this process uses (``FAST_START_ENV``); an unknown part is refused."""
    value = os.environ.get(FAST_START_ENV, "1").strip()
    if value in ("", "1"):
        return frozenset(FAST_START_PARTS)
    if value == "0":
        return frozenset()
    parts = frozenset(p.strip() for p in value.split(",") if p.strip())
    unknown = sorted(parts - set(FAST_START_PARTS))
    if unknown:
        raise SpecError(
            FAST_START_ENV, "", value, f"unknown part(s) {', '.join(unknown)}; 0, 1 or parts of {FAST_START_PARTS}"
        )
    return parts


# --- a local node -------------------------------------------------------------------------------


@contextmanager
def loopback_node_ip() -> Iterator[None]:
    """``ray.init`` keeps a loopback ``_node_ip_address`` instead of replacing it, for the block."""
    import ray._private.services as services

    original = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: host
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


@contextmanager
def lean_head() -> Iterator[None]:
    """A head started in the block runs neither the API server nor the autoscaler monitor."""
    import ray._private.node as node

    originals = node.Node.start_api_server, node.Node.start_monitor
    node.Node.start_api_server = lambda self, **_: None  # type: ignore[method-assign]
    node.Node.start_monitor = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        node.Node.start_api_server, node.Node.start_monitor = originals  # type: ignore[method-assign]


def init_local(cpus: int | None, preload: tuple[str, ...], **public: Any) -> None:
    """``ray.init`` of a new single node on 127.0.0.1 whose workers import ``preload`` first."""
    import ray

    system_config = {"preload_python_modules": list(preload)} if preload else None
    with loopback_node_ip():
        ray.init(address="local", num_cpus=cpus, _node_ip_address=LOOPBACK, _system_config=system_config, **public)


def forget_cached_token() -> None:
    """Ray reads ``$RAY_AUTH_TOKEN_PATH`` again at its next connection."""
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def tune_actors_without_env() -> Iterator[None]:
    """Ray Tune gives the actors it starts in the block no runtime environment (their workers
    already have ``TUNE_ACTOR_ENV``, set in the driver before its node started)."""
    from ray.tune.execution import class_cache

    saved = dict(class_cache.DEFAULT_ENV_VARS), class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.DEFAULT_ENV_VARS = {}
    class_cache.ENV_VARS_TO_PROPAGATE = frozenset()
    try:
        yield
    finally:
        class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE = saved


# --- Ray Tune's experiment state ----------------------------------------------------------------


def ray_experiment_sync() -> tuple[Callable[..., Any], Callable[..., None]]:
    """Ray's own upload builder (``_FilesystemSyncer._sync_up_command``) and checkpoint deletion
    (``checkpoint_manager._delete_fs_path``), as Ray defines them; read once, before any patch."""
    from ray.train._internal import checkpoint_manager
    from ray.train._internal.storage import _FilesystemSyncer

    return _FilesystemSyncer._sync_up_command, checkpoint_manager._delete_fs_path


@contextmanager
def experiment_sync(sync_up_command: Callable[..., Any], delete_fs_path: Callable[..., None]) -> Iterator[None]:
    """Ray Tune's syncers build their uploads with ``sync_up_command(self, local_path, uri, exclude)``
    and its checkpoint managers delete with ``delete_fs_path(fs=, fs_path=)`` in the block."""
    from ray.train._internal import checkpoint_manager
    from ray.train._internal.storage import _FilesystemSyncer

    saved = _FilesystemSyncer._sync_up_command, checkpoint_manager._delete_fs_path
    _FilesystemSyncer._sync_up_command = sync_up_command  # type: ignore[method-assign]
    checkpoint_manager._delete_fs_path = delete_fs_path  # type: ignore[attr-defined]
    try:
        yield
    finally:
        _FilesystemSyncer._sync_up_command, checkpoint_manager._delete_fs_path = saved  # type: ignore[method-assign]


def trial_failures(trial: Any) -> int:
    """How many times Ray Tune has restarted ``trial`` after a failure."""
    return int(trial.run_metadata.num_failures)


# --- Optuna -------------------------------------------------------------------------------------


def stored_trial_handle(study: optuna.Study, number: int) -> optuna.trial.Trial:
    """A ``Trial`` for trial ``number`` of ``study``, as ``study.ask()`` returned it when it was
    proposed: its suggest calls return the stored values, ``report`` and ``set_user_attr`` write to it."""
    for frozen in study.get_trials(deepcopy=False):
        if frozen.number == number:
            return optuna.trial.Trial(study, frozen._trial_id)
    raise KeyError(f"study {study.study_name!r} has no trial {number}")

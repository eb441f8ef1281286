"""What certstudy relies on in Ray Tune and Optuna, checked by behaviour (Ray is pinned 2.60.*).

Each private name or patched attribute in ``study/engine/ray_compat.py`` is exercised here through
the library itself: a real local node, a real Ray Tune experiment, a real Optuna storage. A change
of behaviour in an upgrade fails one of these tests; a change of the library's source text that
keeps the behaviour does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from certstudy.study.engine import atomic_sync
from certstudy.study.engine.optuna_bridge import StudySearcher
from certstudy.study.engine.ray_compat import (
    FAST_START_PARTS,
    TUNE_ACTOR_ENV,
    experiment_sync,
    fast_start,
    ray_experiment_sync,
    stored_trial_handle,
    trial_failures,
)
from certstudy.study.engine.ray_start import TRIAL_MODULE, start_local_ray
from certstudy.study.records.names import FAILURE_KEY, OPTUNA_TRIAL_KEY
from certstudy.study.records.stored_sqlite import TUNER_STATE, can_resume
from certstudy.workdir import Workdir

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/
LOG: list[tuple[str, ...]] = []  # calls of the recording scheduler, searcher and callback (driver side)


def test_ray_is_the_pinned_version() -> None:
    assert ray.__version__.startswith("2.60."), ray.__version__


# --- Optuna ----------------------------------------------------------------------------------------


def test_a_stored_trial_handle_reads_and_writes_the_trial_asked_elsewhere(tmp_path: Path) -> None:
    """``stored_trial_handle``: the trial a lost driver asked, reopened by a new process's study,
    suggests its stored values and records reports and attributes on that same trial."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    first = optuna.create_study(storage=url, study_name="s", direction="maximize")
    asked = first.ask()
    x = asked.suggest_float("x", 0, 1)
    again = optuna.load_study(study_name="s", storage=url)
    handle = stored_trial_handle(again, asked.number)
    assert handle.number == asked.number and handle.suggest_float("x", 0, 1) == x
    handle.report(0.25, 3)
    handle.set_user_attr("k", "v")
    frozen = optuna.load_study(study_name="s", storage=url).trials[0]
    assert frozen.intermediate_values == {3: 0.25} and frozen.user_attrs == {"k": "v"}
    with pytest.raises(KeyError):
        stored_trial_handle(again, 7)


def test_study_searcher_tags_trials_and_records_failures_as_fail() -> None:
    s = StudySearcher(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m", mode="max")
    config = s.suggest("t1")
    assert config[OPTUNA_TRIAL_KEY] == 0 and 0 <= config["x"] <= 1
    s.observe("t1", {"m": 0.5, "training_iteration": 1})  # the scheduler's call, once per epoch
    s.note_error("t1", "RuntimeError: boom")
    s.on_trial_complete("t1", result={"m": 0.5}, error=True)
    trial = s.study.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs == {"ray_trial_id": "t1", "fail_reason": "RuntimeError: boom"}
    assert trial.intermediate_values == {1: 0.5}


def test_study_searcher_leaves_a_trial_told_elsewhere_as_it_was_recorded() -> None:
    s = StudySearcher(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m", mode="max")
    s.suggest("t1")
    s.study.tell(s.study.trials[0].number, 0.7)  # told by a driver before this searcher's state was saved
    s.on_trial_complete("t1", result={"m": 0.5, FAILURE_KEY: "RuntimeError: late"}, error=False)
    s.on_trial_complete("t1", error=True)
    trial = s.study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.7
    assert "fail_reason" not in trial.user_attrs


def test_study_searcher_tells_the_last_point_of_a_grid_without_an_error() -> None:
    """Optuna's grid sampler asks the study to stop after its last point, which raises outside
    ``study.optimize``; the searcher records the outcome and leaves the stopping to Ray Tune."""
    sampler = optuna.samplers.GridSampler({"x": [0.1, 0.2]}, seed=0)
    s = StudySearcher(
        space={"x": optuna.distributions.CategoricalDistribution([0.1, 0.2])}, metric="m", mode="max", sampler=sampler
    )
    for tid in ("a", "b"):
        s.suggest(tid)
        s.on_trial_complete(tid, result={"m": 0.5})
    assert [t.state for t in s.study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(t.params["x"] for t in s.study.trials) == [0.1, 0.2]


# --- Ray Tune's experiment state, without a node ----------------------------------------------


def test_a_local_experiment_is_restorable_exactly_when_its_tuner_state_file_exists(tmp_path: Path) -> None:
    assert not tune.Tuner.can_restore(str(tmp_path)) and not can_resume(str(tmp_path))
    (tmp_path / TUNER_STATE).write_bytes(b"")
    assert tune.Tuner.can_restore(str(tmp_path)) and can_resume(str(tmp_path))


def test_the_experiment_sync_patch_lasts_for_its_block_only() -> None:
    ray_own = ray_experiment_sync()
    with atomic_sync.installed():
        patched = ray_experiment_sync()
        assert patched[0] is not ray_own[0] and patched[1] is not ray_own[1]
    assert ray_experiment_sync() == ray_own


def test_ray_reads_its_token_path_again_only_when_told_to_forget_the_cached_token(tmp_path: Path) -> None:
    """``forget_cached_token``, in a fresh process (the token cache is process-wide)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a" * 64)
    b.write_text("b" * 64)
    code = f"""
import os
from ray._raylet import AuthenticationTokenLoader
from certstudy.study.engine.ray_compat import forget_cached_token
def token():
    raw = AuthenticationTokenLoader.instance().get_raw_token()
    return raw.decode() if isinstance(raw, bytes) else str(raw)
os.environ["RAY_AUTH_TOKEN_PATH"] = {str(a)!r}
forget_cached_token()
first = token()
os.environ["RAY_AUTH_TOKEN_PATH"] = {str(b)!r}
cached = token()
forget_cached_token()
print(first[:1], cached[:1], token()[:1])
"""
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["a", "a", "b"], out.stdout


@pytest.mark.integration
def test_ray_warns_about_token_authentication_through_the_logger_a_local_study_silences(tmp_path: Path) -> None:
    """``TOKEN_SETUP_LOGGER``: a local node with token authentication warns through that logger, and
    raising its level silences the warning (in fresh processes: Ray warns once per process)."""
    code = """
import logging, sys, ray
from certstudy.study.engine.ray_compat import TOKEN_SETUP_LOGGER
if sys.argv[1] == "silenced":
    logging.getLogger(TOKEN_SETUP_LOGGER).setLevel(logging.ERROR)
ray.init(address="local", num_cpus=1, include_dashboard=False)
ray.shutdown()
"""
    said = {}
    for mode in ("silenced", "default"):
        token = tmp_path / f"{mode}.token"
        token.write_text("c" * 64)
        token.chmod(0o600)
        env = {
            k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"
        }  # Ray's default: token auth, with the warning
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, timeout=180)
        assert out.returncode == 0, out.stderr[-2000:]
        said[mode] = out.stdout + out.stderr
    assert "Token authentication is enabled" in said["default"], said["default"][-2000:]
    assert "Token authentication is enabled" not in said["silenced"], said["silenced"][-2000:]


# --- a local node and a Ray Tune experiment on it -----------------------------------------------


@pytest.fixture(scope="module")
def local_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workdir]:
    assert fast_start() == frozenset(FAST_START_PARTS), "these tests check the whole fast start"
    workdir = Workdir(tmp_path_factory.mktemp("work"))
    connection = start_local_ray(workdir, verbose=False, cpus=2)
    try:
        yield workdir
    finally:
        connection.close()


def _session_processes() -> list[str]:
    """Command lines of this driver's Ray processes."""
    me = psutil.Process()
    out = []
    for p in me.children(recursive=True):
        try:
            out.append(" ".join(p.cmdline()))
        except psutil.Error:
            pass
    return out


@pytest.mark.integration
def test_a_local_node_is_on_loopback_without_the_head_helpers_and_preloads_the_trial_module(
    local_node: Workdir,
) -> None:
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    commands = _session_processes()
    assert any("raylet" in c for c in commands), commands
    assert not [c for c in commands if "autoscaler/_private/monitor.py" in c or "dashboard/dashboard.py" in c], commands

    @ray.remote(num_cpus=1)
    def preloaded(module: str) -> bool:
        import sys

        return module in sys.modules

    assert ray.get(preloaded.remote(TRIAL_MODULE))


class _Recorder(Searcher):
    """Proposes the given configurations in order and records Ray Tune's calls."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__(metric="score", mode="max")
        self.configs = list(configs)

    def suggest(self, trial_id: str) -> dict | None:
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        LOG.append(("searcher.result", trial_id, str(result["step"])))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        LOG.append(("searcher.complete", trial_id, "error" if error else "ok"))


class _Scheduler(FIFOScheduler):
    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        LOG.append(("scheduler.result", trial.trial_id, str(result["step"])))
        if trial.config["kind"] == "stop":
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        LOG.append(("scheduler.error", trial.trial_id, trial.config["kind"]))
        super().on_trial_error(tune_controller, trial)


class _Callback(Callback):
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        LOG.append(("callback.complete", trial.config["kind"], str(trial_failures(trial))))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        LOG.append(("callback.env", trial.config["kind"], result["tune_env"], result["inherited_env"]))


def _trainable(config: dict) -> None:
    import json
    import tempfile

    marker = Path(config["marks"]) / config["kind"]
    env = ray.get_runtime_context().runtime_env.get("env_vars") or {}
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = json.loads(Path(d, "s.json").read_text())["step"] + 1
    for step in range(start, 3):
        if config["kind"] == "error" or (config["kind"] == "flaky" and step == 1 and not marker.exists()):
            marker.touch()
            raise RuntimeError("boom")
        with tempfile.TemporaryDirectory() as d:
            Path(d, "s.json").write_text(json.dumps({"step": step}))
            tune.report(
                {
                    "score": float(step),
                    "step": step,
                    "tune_env": json.dumps(sorted(env)),
                    "inherited_env": json.dumps({k: os.environ.get(k) for k in TUNE_ACTOR_ENV}),
                },
                checkpoint=tune.Checkpoint.from_directory(d),
            )


@pytest.mark.integration
def test_ray_tune_calls_the_hooks_certstudy_relies_on_in_order(local_node: Workdir, tmp_path: Path) -> None:
    """One experiment on the fast-started node, inside the atomic-sync block:
    - every result reaches the scheduler before the searcher (the scheduler decides pruning);
    - an errored trial reaches the scheduler's ``on_trial_error`` before the searcher's completion;
    - a trial the scheduler stops reaches the searcher as complete, not errored;
    - ``trial_failures`` counts a trial's restarts;
    - Tune's actors carry no runtime environment and inherit ``TUNE_ACTOR_ENV`` from the workers;
    - the syncer builds its uploads, and the checkpoint manager deletes old checkpoints, through the
      functions ``experiment_sync`` put in place."""
    LOG.clear()
    (tmp_path / "marks").mkdir()
    uploads: list[str] = []
    deletions: list[str] = []
    sync_up, delete = ray_experiment_sync()

    def recording_sync_up(self: Any, local_path: str, uri: str, exclude: list | None = None) -> Any:
        uploads.append(uri)
        return sync_up(self, local_path, uri, exclude)

    def recording_delete(fs: Any, fs_path: str) -> None:
        deletions.append(fs_path)
        delete(fs=fs, fs_path=fs_path)

    kinds = ["ok", "stop", "error", "flaky"]
    tuner = tune.Tuner(
        _trainable,
        tune_config=tune.TuneConfig(
            search_alg=_Recorder([{"kind": k, "marks": str(tmp_path / "marks")} for k in kinds]),
            scheduler=_Scheduler(),
            num_samples=len(kinds),
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(
            name="exp",
            storage_path=str(tmp_path / "storage"),
            callbacks=[_Callback()],
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )
    with experiment_sync(recording_sync_up, recording_delete):
        tuner.fit()

    results = [e for e in LOG if e[0] in ("scheduler.result", "searcher.result")]
    for kind, step in {(e[1], e[2]) for e in results}:
        seen = [e[0] for e in results if e[1:] == (kind, step)]
        assert seen[0] == "scheduler.result", (kind, step, seen)
    errored = [i for i, e in enumerate(LOG) if e[0] == "scheduler.error" and e[2] == "error"]
    assert errored, LOG
    error_id = LOG[errored[-1]][1]
    told = [i for i, e in enumerate(LOG) if e == ("searcher.complete", error_id, "error")]
    assert told and told[0] > errored[-1], [e for e in LOG if error_id in e]
    stop_complete = [e for e in LOG if e[0] == "searcher.complete" and e[2] == "ok"]
    assert len(stop_complete) == 3, LOG  # ok, stop (stopped by the scheduler) and flaky
    assert ("callback.complete", "flaky", "1") in LOG and ("callback.complete", "ok", "0") in LOG, LOG
    envs = {e[2:] for e in LOG if e[0] == "callback.env"}
    assert envs == {("[]", '{"PL_DISABLE_FORK": "1"}')}, envs
    assert uploads and all(u.endswith("exp") for u in uploads), uploads
    assert len(deletions) >= 2 and all("checkpoint_" in d for d in deletions), deletions
    assert tune.Tuner.can_restore(str(tmp_path / "storage" / "exp"))

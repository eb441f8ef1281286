"""Contract with Ray Tune internals that study/engine/optuna_bridge.py relies on (Ray is pinned 2.60.*).

If any of these fail after an upgrade, re-read ray/tune/search/optuna/optuna_search.py and
ray/tune/execution/tune_controller.py before changing the pin.
"""

from __future__ import annotations

import inspect

import optuna
import ray
from ray.tune.execution import tune_controller
from ray.tune.search.optuna import OptunaSearch

from certstudy.study.engine.optuna_bridge import StudySearcher
from certstudy.study.records.names import FAILURE_KEY, OPTUNA_TRIAL_KEY
from certstudy.study.spec.pruning import PruningConfig


def test_ray_is_the_pinned_version() -> None:
    assert ray.__version__.startswith("2.60."), ray.__version__


def test_optuna_search_private_state_names() -> None:
    s = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m", mode="max")
    for name in ("_ot_trials", "_ot_study", "_completed_trials", "_setup_study"):
        assert hasattr(s, name), f"OptunaSearch no longer has {name}"
    assert isinstance(s._ot_study, optuna.Study)
    assert isinstance(s._ot_trials, dict) and isinstance(s._completed_trials, set)


def test_failure_is_shown_to_the_scheduler_before_the_searcher_records_it() -> None:
    src = inspect.getsource(tune_controller.TuneController._process_trial_failure)
    assert src.index("_scheduler_alg.on_trial_error") < src.index(
        "_search_alg.on_trial_complete(trial.trial_id, error=True)"
    )


def test_stock_optuna_search_records_an_errored_trial_with_results_as_complete() -> None:
    """The reason StudySearcher overrides on_trial_complete; if Ray fixes it, simplify ours."""
    src = inspect.getsource(OptunaSearch.on_trial_complete)
    assert "if val is None:" in src and "if error:" in src


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


# --- pruning (study/engine/optuna_bridge.py, study/engine/stop_board.py, study/engine/runner.py:resume) -------------


def test_the_scheduler_sees_each_result_before_the_searcher() -> None:
    """StudyScheduler.on_trial_result reports to Optuna and decides; the searcher's own hook is then a no-op."""
    src = inspect.getsource(tune_controller.TuneController._process_trial_result)
    assert src.index("_scheduler_alg.on_trial_result") < src.index("_search_alg.on_trial_result")


def test_optuna_search_hard_codes_a_nop_pruner_that_the_study_lets_us_replace() -> None:
    src = inspect.getsource(OptunaSearch._setup_study)
    assert "NopPruner()" in src and "create_study(" in src
    s = StudySearcher(
        space={"x": optuna.distributions.FloatDistribution(0, 1)},
        metric="m",
        mode="max",
        pruning=PruningConfig(pruner={"name": "threshold", "lower": 0.5}),
    )
    assert isinstance(s._ot_study.pruner, optuna.pruners.ThresholdPruner)


def test_optuna_search_checkpoints_its_whole_dict_and_restores_in_place() -> None:
    """Pruning state lives in StudySearcher's __dict__ and must survive Ray's experiment checkpoints."""
    assert "self.__dict__.copy()" in inspect.getsource(OptunaSearch.save)
    assert "self.__dict__.update(save_object)" in inspect.getsource(OptunaSearch.restore)


def test_tuner_state_is_one_pickle_so_scheduler_and_callbacks_keep_the_searcher() -> None:
    from ray.tune.impl import tuner_internal

    assert "pickle.dumps(self.__getstate__())" in inspect.getsource(tuner_internal.TunerInternal)
    assert hasattr(tuner_internal.TunerInternal, "get_run_config")
    src = inspect.getsource(tune_controller.TuneController)
    assert "self._search_alg.restore_from_dir(" in src and "self._callbacks.restore_from_dir(" in src


def test_a_stopped_trial_reaches_the_searcher_as_complete() -> None:
    """Why pruning is not a Ray STOP: stock Ray would tell Optuna COMPLETE with a truncated value."""
    src = inspect.getsource(tune_controller.TuneController.stop_trial)
    assert "self._search_alg.on_trial_complete(" in src


def test_define_by_run_suggest_reuses_a_trial_object_we_place_in_ot_trials() -> None:
    """After a lost driver, StudySearcher.suggest hands a proposed-but-unknown Optuna trial to the
    new Ray trial by putting it in _ot_trials before OptunaSearch.suggest runs."""
    src = inspect.getsource(OptunaSearch.suggest)
    assert "if trial_id not in self._ot_trials:" in src and "_suggest_from_define_by_run_func" in src
    study = optuna.create_study(direction="maximize")
    asked = study.ask()
    asked.suggest_float("x", 0, 1)
    again = optuna.trial.Trial(study, asked._trial_id)
    assert again.suggest_float("x", 0, 1) == asked.params["x"]  # the stored value comes back


def test_ray_init_rewrites_a_loopback_node_ip_through_the_function_study_ray_start_switches_off() -> None:
    """``study/engine/ray_start.py`` keeps a local study's Ray on 127.0.0.1 by replacing this one call."""
    import ray._private.services as services
    from ray._private import worker

    assert callable(services.resolve_ip_for_localhost)
    assert "services.resolve_ip_for_localhost(_node_ip_address)" in inspect.getsource(worker.init)


def test_ray_reads_its_token_path_from_the_environment_and_can_forget_a_cached_token() -> None:
    from ray._private.authentication import authentication_token_setup
    from ray._raylet import AuthenticationTokenLoader

    assert callable(AuthenticationTokenLoader.instance().reset_cache)
    assert "RAY_AUTH_TOKEN_PATH" in inspect.getsource(ray.exceptions)
    assert authentication_token_setup._get_default_token_path().name == "auth_token"


def test_the_experiment_syncer_builds_its_upload_in_the_method_study_atomic_sync_replaces() -> None:
    from ray.train._internal import storage

    params = list(inspect.signature(storage._FilesystemSyncer._sync_up_command).parameters)
    assert params == ["self", "local_path", "uri", "exclude"], params
    assert "storage_filesystem" in inspect.getsource(storage._FilesystemSyncer.__init__)
    src = inspect.getsource(storage.StorageContext.__init__)
    assert "_FilesystemSyncer(" in src  # the driver's experiment state is synced by this class


def test_ray_tune_stops_gracefully_on_sigint_through_the_handler_disk_full_stop_raises() -> None:
    from ray.tune import tune as tune_module

    src = inspect.getsource(tune_module._setup_signal_catching)
    assert "signal.SIGINT" in src and "experiment_interrupted_event.set()" in src
    assert "not experiment_interrupted_event.is_set()" in inspect.getsource(tune_module.run)


def test_a_local_experiment_is_restorable_exactly_when_its_tuner_state_file_exists(tmp_path) -> None:
    from ray.tune import Tuner
    from ray.tune.impl.tuner_internal import _TUNER_PKL

    from certstudy.study.records.stored_sqlite import TUNER_STATE, can_resume

    assert TUNER_STATE == _TUNER_PKL
    assert not Tuner.can_restore(str(tmp_path)) and not can_resume(str(tmp_path))
    (tmp_path / TUNER_STATE).write_bytes(b"")
    assert Tuner.can_restore(str(tmp_path)) and can_resume(str(tmp_path))


def test_ray_deletes_old_checkpoints_through_the_module_function_study_atomic_sync_defers() -> None:
    from ray.train._internal import checkpoint_manager

    src = inspect.getsource(checkpoint_manager._CheckpointManager.register_checkpoint)
    assert "_delete_fs_path(fs=checkpoint.filesystem, fs_path=checkpoint.path)" in src
    assert callable(checkpoint_manager._delete_fs_path)


def test_tune_gives_its_actors_the_environment_a_local_study_gives_its_workers_instead() -> None:
    """``study/engine/ray_start.py`` sets Tune's per-actor variables before the local raylet starts and
    then has Tune add none, so its actors can take the raylet's prestarted, preloaded workers."""
    from ray.tune.execution import class_cache

    from certstudy.study.engine.ray_start import TUNE_ACTOR_ENV

    assert class_cache.DEFAULT_ENV_VARS == TUNE_ACTOR_ENV
    assert isinstance(class_cache.ENV_VARS_TO_PROPAGATE, (set, frozenset))
    src = inspect.getsource(class_cache._ActorClassCache.get)
    assert "DEFAULT_ENV_VARS.copy()" in src and "in ENV_VARS_TO_PROPAGATE" in src
    assert 'runtime_env = {"env_vars": env_vars}' in src


def test_a_local_head_can_start_without_its_api_server_and_monitor_and_preload_worker_modules() -> None:
    """``study/engine/ray_start.py`` skips these two head processes and asks the raylet to preload the
    trial module in its workers."""
    import ray._private.node as node
    from ray._private.workers import default_worker

    src = inspect.getsource(node.Node.start_head_processes)
    assert "self.start_monitor()" in src and "self.start_api_server(" in src
    assert "worker_preload_modules" in inspect.getsource(default_worker)

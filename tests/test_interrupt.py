"""Ctrl-C during a study: the launch exits, and no MLflow run is left RUNNING."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import launch_and_interrupt, tiny_study

pytestmark = pytest.mark.integration


def test_interrupted_study_leaves_no_run_running(tmp_path: Path) -> None:
    spec = tiny_study(
        "interrupted",
        training={"epochs": 5, "batch_size": 128},
        search={"num_trials": 4, "max_concurrent": 2, "seed": 0},
    )
    # both first trials running and logging, held after their second epoch
    returncode, out, work = launch_and_interrupt(tmp_path, spec, hold_from=0, hold_epoch=1, held=2)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    assert returncode != 0, out
    runs = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], out
    parent = [r for r in runs if r.data.tags.get("certstudy.role") == "study"]
    assert len(parent) == 1 and parent[0].info.status == "KILLED"
    children = [r for r in runs if r.data.tags.get("certstudy.role") == "trial"]
    assert children and all(r.info.status in ("KILLED", "FINISHED", "FAILED") for r in children)
    assert any(r.data.tags.get("certstudy.fail_reason") for r in children if r.info.status == "KILLED")


def test_a_lost_driver_is_resumed_with_exactly_the_planned_trials(tmp_path: Path) -> None:
    """SIGKILL to the driver (and its local Ray) mid-study, then ``certstudy resume``."""
    import optuna

    from certstudy.cli import main

    n = 5
    spec = tiny_study(
        "lost-driver",
        training={"epochs": 4, "batch_size": 64},
        search={"num_trials": n, "max_concurrent": 2, "seed": 0},
    )
    # killed with trials 0 and 1 ended and 2 and 3 mid-way (held after epoch 1)
    returncode, out, work = launch_and_interrupt(tmp_path, spec, hold_from=2, hold_epoch=1, held=2, kill=True)
    assert returncode == -9, out
    assert main(["resume", "lost-driver", "--workdir", str(work)]) == 0
    study = optuna.load_study(study_name="lost-driver", storage=f"sqlite:///{work / 'lost-driver' / 'optuna.db'}")
    states = [t.state for t in study.get_trials()]
    assert len(states) == n and all(s == optuna.trial.TrialState.COMPLETE for s in states), states
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lost-driver").experiment_id])
    parents = [r for r in runs if r.data.tags.get("certstudy.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = [r for r in runs if r.data.tags.get("certstudy.role") == "trial" and r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in finished) == list(
        range(n)
    )  # one finished run per trial

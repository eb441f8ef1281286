"""Pruning in real studies (local Ray, MLflow and Optuna on sqlite): pruned trials stop at once,
are PRUNED in Optuna, tagged in MLflow, end on their best epoch and are exported; a study
interrupted mid-way and resumed keeps its earlier decisions and prunes the trials that follow."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import launch_and_interrupt, launch_study, tiny_study

pytestmark = pytest.mark.integration

# Deterministic decisions: every trial's val/robust_acc is below 0.99, so the threshold pruner
# prunes each trial at the first epoch it may (n_warmup_steps).
THRESHOLD = {"pruner": {"name": "threshold", "lower": 0.99, "n_warmup_steps": 1}}


def pruned_study(name: str, **overrides: object) -> dict:
    spec = tiny_study(
        name,
        training={
            "epochs": 6,
            "batch_size": 128,
            "search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        },
        pruning=THRESHOLD,
    )
    spec.update(overrides)
    return spec


def test_pruned_trials_are_pruned_everywhere_and_exported_at_their_best_epoch(tmp_path: Path) -> None:
    out = launch_study(tmp_path, pruned_study("pruned", search={"num_trials": 3, "max_concurrent": 2, "seed": 1}))
    client: MlflowClient = out["client"]
    trials = out["optuna"].get_trials()
    assert len(trials) == 3
    for t in trials:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs["prune_reason"] == "threshold" and t.user_attrs["pruned_at_epoch"] == 1
        assert t.value == t.intermediate_values[1] and sorted(t.intermediate_values) == [0, 1]
    assert len(out["children"]) == 3
    for run in out["children"]:
        tags, metrics = run.data.tags, run.data.metrics
        assert run.info.status == "FINISHED"
        assert (tags["certstudy.status"], tags["prune_reason"], tags["pruned_at_epoch"]) == ("pruned", "threshold", "1")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/robust_acc")]
        assert sorted(steps) == [0, 1]  # stopped at once: no epoch after the decision
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/robust_acc")}
        best = int(metrics["best/epoch"])
        assert metrics["best/val/robust_acc"] == history[best] == max(history.values())
        assert "test/clean_acc" in metrics and "test/robust_acc" in metrics
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.pt"]
    from certstudy.cli import main

    assert main(["export", "pruned", "--workdir", str(out["work"]), "--top", "3"]) == 0
    docs = list(yaml.safe_load_all((out["work"] / "pruned" / "best.yaml").read_text()))
    assert len(docs) == 3
    for doc in docs:
        prov = doc["provenance"]
        assert prov["prune_reason"] == "threshold" and prov["pruned_at_epoch"] == 1
        assert prov["metrics"]["val/robust_acc"] == prov["metrics"]["best/val/robust_acc"]
        assert doc["evaluation"]["final_model"] == "best"


def _runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_an_interrupted_study_resumes_with_its_pruning_decisions(tmp_path: Path) -> None:
    spec = pruned_study("resumed", search={"num_trials": 6, "max_concurrent": 1, "seed": 2})
    # one trial at a time: trials 0 and 1 are pruned, trial 2 is held after its first epoch, then Ctrl-C
    returncode, first, work = launch_and_interrupt(tmp_path, spec, hold_from=2, hold_epoch=0, held=1)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    assert returncode == 130, first
    before = {
        r.info.run_id: (r.info.end_time, r.data.tags.get("ray.trial_id"))
        for r in _runs(client, "resumed")
        if r.data.tags.get("certstudy.status") == "pruned"
    }
    storage = f"sqlite:///{work / 'resumed' / 'optuna.db'}"
    pruned_before = {
        t.number: dict(t.user_attrs)
        for t in optuna.load_study(study_name="resumed", storage=storage).get_trials()
        if t.state == optuna.trial.TrialState.PRUNED
    }
    assert sorted(pruned_before) == [0, 1], first

    from certstudy.cli import main
    from certstudy.study.records.status import study_status
    from certstudy.workdir import Workdir

    halfway = study_status(Workdir(work), "resumed")  # read from storage; Ray is not started
    assert halfway.resumable and halfway.counts["pruned"] == len(pruned_before)
    assert "KILLED" in halfway.parent_status
    assert main(["status", "resumed", "--workdir", str(work)]) == 0
    assert main(["resume", "resumed", "--workdir", str(work)]) == 0
    done = study_status(Workdir(work), "resumed")
    assert done.counts == {"pruned": 6} and not done.resumable and done.parent_status.startswith("FINISHED")
    assert all(r.epochs is not None and r.epochs <= 3 and r.note.startswith("pruned at epoch 1") for r in done.rows)
    trials = optuna.load_study(study_name="resumed", storage=storage).get_trials()
    assert len(trials) == 6
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["pruned_at_epoch"] == 1 for t in trials)
    for number, attrs in pruned_before.items():  # earlier decisions untouched
        assert trials[number].user_attrs == attrs
    runs = _runs(client, "resumed")
    children = [r for r in runs if r.data.tags.get("certstudy.role") == "trial"]
    assert len(children) == 6 and len({r.data.tags["ray.trial_id"] for r in children}) == 6  # one run per trial
    assert all(r.info.status == "FINISHED" and r.data.tags["certstudy.status"] == "pruned" for r in children)
    for run in children:  # trials pruned before the interruption were not run again
        if run.info.run_id in before:
            assert run.info.end_time == before[run.info.run_id][0]
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/robust_acc"))
        assert steps[-1] <= 2, steps  # pruned at epoch 1 (a trial interrupted after it resumes at most one epoch later)
    parent = [r for r in runs if r.data.tags.get("certstudy.role") == "study"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"


def test_a_pruning_study_after_another_study_in_the_same_process_reaches_its_own_board(tmp_path: Path) -> None:
    """One study launched twice in a row in one process, unpruned then pruned, in two work directories
    (as bench/pruning_savings.py does): each launch starts its own Ray, whose job ids start at 1
    again, and the second one's prune decisions must reach its own board, not the first Ray's dead one."""
    one = {"search": {"num_trials": 1, "max_concurrent": 1, "seed": 1}}
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    launch_study(tmp_path / "first", tiny_study("twice", **one))
    out = launch_study(tmp_path / "second", pruned_study("twice", **one))
    (trial,) = out["optuna"].get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["prune_reason"] == "threshold"

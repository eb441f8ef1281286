"""The shipped CIFAR-10 PGD-AT study (trials/cifar10_pgd_at.yaml) end to end on a tiny CIFAR-format file
set, with the epochs, the model's width, the PGD steps and the resources overridden small (no GPU on a
CI machine) and everything else as shipped: crop + flip, bf16 autocast, channels-last, the
overfitting rule, trials ending on their best epoch."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, launch_study
from test_trial_loop_speed import write_cifar

pytestmark = pytest.mark.integration


def test_shipped_cifar10_pgd_at_study_runs_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("cifar")
    data = write_cifar(root / "data", per_batch=20, test=40)
    spec = yaml.safe_load((REPO / "trials" / "cifar10_pgd_at.yaml").read_text())
    assert spec["dataset"]["augment"] == {"crop": 4, "flip": True} and spec["training"]["precision"] == "bf16"
    spec["dataset"]["options"] = {"root": str(data), "val_size": 20, "test_subset": 40}
    spec["model"]["params"]["width"] = 4
    spec["method"]["params"]["steps"] = 2
    spec["evaluation"]["attack"]["steps"] = 2
    spec["training"].update(
        {"epochs": 3, "batch_size": 40, "schedule": {"name": "multistep", "milestones": [1, 2], "gamma": 0.1}}
    )
    spec["evaluation"].update({"train_subset": 20, "batch_size": 64})
    spec["search"].update({"num_trials": 2})
    spec["resources"] = {"cpu": 1, "gpu": 0}
    study = launch_study(root, spec)
    assert [t.state.name for t in study["optuna"].trials] == ["COMPLETE", "COMPLETE"]
    for child in study["children"]:
        m = child.data.metrics
        assert child.info.status == "FINISHED"
        assert 0 <= m["test/robust_acc"] <= m["test/clean_acc"] <= 1
        assert 0 <= m["best/epoch"] <= 2  # ends on its best epoch
        assert m["val/clean_acc"] >= 0 and "train/lr" in m

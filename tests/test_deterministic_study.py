"""A real study of the deterministic certificates (local Ray, MLflow and Optuna on sqlite): a GloRo
trial and a CROWN-IBP trial, both certified by lipschitz, IBP and CROWN, audited, and reported in
MLflow with an objective on val Lipschitz-certified accuracy."""

from __future__ import annotations

import pytest

from conftest import launch_study

pytestmark = pytest.mark.integration

SPEC = {
    "name": "dtest",
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "params": {"width": 48, "depth": 1}},
    "methods": [
        {"name": "gloro", "params": {"eps": 0.25, "loss": "crossentropy"}},
        {"name": "crown_ibp", "params": {"eps": 0.03, "norm": "l2", "warmup_epochs": 1}},
    ],
    "training": {"epochs": 3, "batch_size": 128, "lr": 5e-3},
    "evaluation": {
        "attack": {"norm": "l2", "eps": 0.25, "steps": 3},
        "attack_grid": True,
        "radii": {"l2": [0.0, 0.1, 0.25]},
        "val_subset": 64,
        "test_subset": 100,
        "certify_val_subset": 40,
        "certifiers": [{"name": "lipschitz"}, {"name": "ibp"}, {"name": "crown"}],
    },
    "objectives": [{"metric": "val/certified_acc_lipschitz_l2_r0.1", "mode": "max"}],
    "search": {
        "sampler": "random",
        "num_trials": 2,
        "max_concurrent": 2,
        "seed": 0,
        "start_points": [{"method": "gloro"}, {"method": "crown_ibp"}],
    },
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return launch_study(tmp_path_factory.mktemp("deterministic"), SPEC)


def test_every_trial_is_certified_audited_and_sound(study: dict) -> None:
    assert [t.state.name for t in study["optuna"].trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(c.data.tags["certstudy.method"] for c in study["children"]) == ["crown_ibp", "gloro"]
    for child in study["children"]:
        m = child.data.metrics
        assert child.info.status == "FINISHED"
        assert m["audit/violations"] == 0 and m["audit/points"] > 0
        for cert in ("lipschitz", "ibp", "crown"):  # the crown_ibp method's l2 reaches ibp and crown
            for r in ("r0", "r0.1", "r0.25"):
                assert 0 <= m[f"test/certified_acc_{cert}_l2_{r}"] <= m["test/clean_acc"] + 1e-9
            assert m[f"audit/violations_{cert}"] == 0
        assert m["test/certified_acc_crown_l2_r0.1"] <= m["test/robust_acc_l2_r0.1"] + 1e-9  # certified <= PGD-robust
        assert "test/acr_lipschitz" in m and "val/certified_acc_lipschitz_l2_r0.1" in m
        artifacts = {f.path for f in study["client"].list_artifacts(child.info.run_id, "certify")}
        assert {"certify/lipschitz_curve.csv", "certify/crown_radii.csv"} <= artifacts
        assert not any(path.endswith("_audit.csv") for path in artifacts)  # no violation to list
    gloro = next(c for c in study["children"] if c.data.tags["certstudy.method"] == "gloro")
    assert gloro.data.metrics["test/gloro_k_sub_power"] <= gloro.data.metrics["test/gloro_k_sub_exact"] * (1 + 1e-6)

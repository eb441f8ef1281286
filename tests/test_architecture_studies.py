"""Real 2-trial studies (local Ray, MLflow and Optuna on sqlite) of each family of the papers' networks:
CNN7 (BatchNorm) with CROWN-IBP, GloRo 2C2F (MinMax) with GloRo, LeNet (max pooling) with randomized
smoothing on MNIST, and a small PreAct-ResNet-18 with PGD-AT. Every deterministic certificate is
audited and must show no violation."""

from __future__ import annotations

import pytest

from conftest import launch_study, shared_mnist_root

pytestmark = pytest.mark.integration


def _spec(
    name: str, model: dict, method: dict, evaluation: dict, *, dataset: dict | None = None, epochs: int = 2
) -> dict:
    return {
        "name": name,
        "dataset": dataset or {"name": "digits"},
        "model": model,
        "method": method,
        "training": {
            "epochs": epochs,
            "batch_size": 64,
            "search": {"lr": {"type": "categorical", "choices": [0.002, 0.005]}},
        },
        "evaluation": {"val_subset": 64, "test_subset": 60, **evaluation},
        "objectives": [{"metric": "val/clean_acc", "mode": "max"}],
        "search": {"sampler": "grid", "num_trials": 2, "max_concurrent": 2, "seed": 0},
    }


def _finished(study: dict) -> list:
    assert [t.state.name for t in study["optuna"].trials] == ["COMPLETE", "COMPLETE"]
    assert len(study["parents"]) == 1 and len(study["children"]) == 2
    assert all(c.info.status == "FINISHED" for c in study["children"])
    return study["children"]


def test_cnn7_with_batchnorm_trains_by_crown_ibp_and_is_soundly_certified(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    spec = _spec(
        "cnn7_crown_ibp",
        {"name": "cnn7", "params": {"width": 8, "linear_size": 32, "normalize": True}},
        {"name": "crown_ibp", "params": {"eps": 0.03, "norm": "linf", "warmup_epochs": 1, "beta_end": 0.5}},
        {
            "attack": {"norm": "linf", "eps": 0.02, "steps": 3},
            "radii": {"linf": [0.0, 0.005, 0.01, 0.02]},
            "certify_subset": 30,
            "certifiers": [{"name": "ibp"}, {"name": "crown"}, {"name": "lipschitz"}],
        },
        epochs=3,
    )
    for child in _finished(launch_study(tmp_path_factory.mktemp("cnn7"), spec)):
        m = child.data.metrics
        assert m["audit/violations"] == 0 and m["audit/points"] > 0
        for cert in ("ibp", "crown"):
            assert (
                0 <= m[f"test/certified_acc_{cert}_linf_r0.005"] <= m[f"test/certified_acc_{cert}_linf_r0"] <= 1
            )  # r0: correct with a positive margin
        assert (
            m["test/certified_acc_ibp_linf_r0.005"] <= m["test/certified_acc_crown_linf_r0.005"] + 0.1
        )  # CROWN is rarely looser
        assert m["test/clean_acc"] > 0.3
        assert "train/crown_ibp_robust_ce" in m


def test_gloro_2c2f_with_minmax_trains_by_gloro_and_is_soundly_certified(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    spec = _spec(
        "gloro_minmax",
        {"name": "gloro_2c2f"},
        {"name": "gloro", "params": {"eps": 0.3, "loss": "trades", "lambda": 1.0}},
        {
            "attack": {"norm": "l2", "eps": 0.3, "steps": 3},
            "radii": {"l2": [0.0, 0.1, 0.3]},
            "certify_subset": 40,
            "certifiers": [{"name": "lipschitz"}, {"name": "ibp"}, {"name": "crown"}],
        },
        epochs=3,
    )
    for child in _finished(launch_study(tmp_path_factory.mktemp("gloro"), spec)):
        m = child.data.metrics
        assert m["audit/violations"] == 0 and m["audit/points"] > 0
        assert m["test/lipschitz_exact"] == 1.0
        assert m["test/gloro_k_sub_power"] <= m["test/gloro_k_sub_exact"] * (1 + 1e-6)
        for cert in ("lipschitz", "ibp", "crown"):
            assert 0 <= m[f"test/certified_acc_{cert}_l2_r0.1"] <= m[f"test/certified_acc_{cert}_l2_r0"] <= 1
        assert m["test/clean_acc"] > 0.3


def test_lenet_with_max_pooling_trains_by_smoothing_on_mnist(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = shared_mnist_root()
    spec = _spec(
        "lenet_smoothing",
        {"name": "lenet"},
        {"name": "smoothing", "params": {"sigma": 0.25}},
        {
            "attack": {"norm": "l2", "eps": 0.25, "steps": 2},
            "radii": {"l2": [0.0, 0.25, 0.5]},
            "certify_subset": 20,
            "certifiers": [
                {"name": "smoothing", "params": {"n0": 32, "n": 300, "alpha": 0.01, "predict_n": 100}},
                {"name": "ibp", "params": {"norm": "l2"}},
            ],
        },
        dataset={
            "name": "mnist",
            "options": {"root": str(root), "val_size": 200, "train_subset": 600, "test_subset": 100},
        },
    )
    for child in _finished(launch_study(tmp_path_factory.mktemp("lenet"), spec)):
        m = child.data.metrics
        assert m["test/clean_acc"] > 0.5  # 2 epochs on 600 images
        assert 0 <= m["test/certified_acc_smoothing_l2_r0.25"] <= 1
        assert m["audit/violations"] == 0  # the IBP certificate of the max-pooling net


def test_small_preact_resnet_trains_by_pgd_at(tmp_path_factory: pytest.TempPathFactory) -> None:
    spec = _spec(
        "preact_pgd",
        {"name": "preact_resnet18", "params": {"width": 8, "normalize": True}},
        {"name": "adversarial", "params": {"eps": 0.05, "steps": 3}},
        {"attack": {"norm": "linf", "eps": 0.05, "steps": 3}},
    )
    for child in _finished(launch_study(tmp_path_factory.mktemp("preact"), spec)):
        m = child.data.metrics
        assert 0 <= m["test/robust_acc"] <= m["test/clean_acc"] + 1e-9
        assert m["test/clean_acc"] > 0.2
        assert "audit/violations" not in m or m["audit/violations"] == 0  # no deterministic certificate to audit

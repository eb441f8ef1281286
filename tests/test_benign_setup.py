"""The pieces of the benign-overfitting study: the two-layer network, GD with several steps per
epoch, evaluation at the training radius, and the grid sampler."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from certstudy.errors import SpecError
from certstudy.models import MODELS
from certstudy.study.spec.loading import load_study, validate_spec
from certstudy.study.spec.space import grid_points
from certstudy.trial import run_trial
from certstudy.trial.config import TrainingConfig, TrialConfig
from conftest import REPO, tiny_study


def two_layer(**params: object) -> torch.nn.Module:
    factory = MODELS.get("two_layer")
    torch.manual_seed(0)
    return factory.build(factory.Params(**params), (50,), 2)


def test_two_logits_give_the_logistic_loss_and_the_second_layer_is_fixed() -> None:
    model = two_layer(width=8, init_scale=0.5)
    x = torch.randn(20, 50)
    y = torch.randint(0, 2, (20,))
    logits = model(x)
    f = logits[:, 1] - logits[:, 0]
    assert torch.allclose(logits[:, 0], -logits[:, 1])
    sign = y.float() * 2 - 1
    assert torch.allclose(F.cross_entropy(logits, y), F.softplus(-sign * f).mean(), atol=1e-6)
    head = model[-1]
    assert not head.weight.requires_grad
    a = head.weight[1] * 2
    assert torch.allclose(a.abs(), torch.full((8,), 1 / math.sqrt(8))) and a.sum().abs() < 1e-6


def test_fan_in_scaling_is_gradient_descent_with_lr_over_d() -> None:
    """One GD step with lr on the scaled model = one GD step with lr / d on the plain model."""
    x, y, lr, d = torch.randn(30, 50), torch.randint(0, 2, (30,)), 2.0, 50
    scaled, plain = two_layer(width=6, init_scale=0.3), two_layer(width=6, init_scale=0.3, fan_in_scaling=False)
    with torch.no_grad():
        plain[1].weight.copy_(scaled[1].weight / math.sqrt(d))
    assert torch.allclose(scaled(x), plain(x), atol=1e-6)
    for model, step in ((scaled, lr), (plain, lr / d)):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=step)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.allclose(scaled(x), plain(x), atol=1e-5)


def test_the_two_layer_net_is_refused_by_deterministic_certifiers() -> None:
    """Its stored first-layer weight is not the applied one, and phi is not a ReLU: no certifier
    may walk it as a chain of Linear and ReLU layers."""
    from certstudy.certify.network import UnsupportedLayer, layers_of

    with pytest.raises(UnsupportedLayer, match="ScaledLinear"):
        layers_of(two_layer(width=4), (50,))
    with pytest.raises(UnsupportedLayer, match="SmoothLeakyReLU"):
        layers_of(two_layer(width=4, fan_in_scaling=False), (50,))


def test_full_batch_steps_per_epoch_and_attack_at_the_training_radius(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="steps_per_epoch applies to full_batch"):
        TrainingConfig(steps_per_epoch=3)
    cfg = TrialConfig.model_validate(
        {
            "dataset": {"name": "synthetic_mixture", "options": {"d": 40, "n_train": 30, "n_val": 40, "n_test": 60}},
            "model": {"name": "two_layer", "params": {"width": 16}},
            "method": {"name": "adversarial", "params": {"norm": "l2", "eps": 0.0, "steps": 3}},
            "training": {
                "epochs": 2,
                "full_batch": True,
                "steps_per_epoch": 5,
                "optimizer": "sgd",
                "momentum": 0.0,
                "lr": 10.0,
            },
            "evaluation": {"attack": {"norm": "linf", "eps": 0.5, "steps": 5, "at_training_radius": True}},
        }
    )
    out = run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path))
    # eps 0: the attack at the training radius is no attack at all, whatever evaluation.attack.eps says
    assert out["test/robust_acc"] == out["test/clean_acc"] and out["val/robust_acc"] == out["val/clean_acc"]


def test_spec_checks_for_the_grid_and_the_training_radius() -> None:
    spec = load_study(REPO / "trials" / "benign_overfitting.yaml")
    grid = grid_points(spec)
    assert grid == {
        "adversarial.eps": [0.0, 0.44721, 1.11803, 2.23607, 3.3541, 4.47214],
        "dataset.d": [1000, 2000, 5000],
    }
    with pytest.raises(SpecError, match="categorical parameters only"):
        validate_spec(tiny_study("g", search={"sampler": "grid", "num_trials": 2}), "s.yaml")
    flat = tiny_study("g", search={"sampler": "grid", "num_trials": 7})
    flat["methods"] = [{"name": "erm"}, {"name": "adversarial"}]
    flat["training"] = {"epochs": 1, "search": {"lr": {"type": "categorical", "choices": [0.01, 0.001, 0.1]}}}
    with pytest.raises(SpecError, match="the grid has 6 points"):
        validate_spec(flat, "s.yaml")
    with pytest.raises(SpecError, match="evaluation.attack.at_training_radius.*'erm' trains against no radius"):
        validate_spec(tiny_study("g", evaluation={"attack": {"at_training_radius": True}}), "s.yaml")

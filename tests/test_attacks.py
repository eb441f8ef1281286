"""PGD stays in the eps-ball and the input box, and never lowers the loss below the clean one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from certstudy.attacks import pgd
from certstudy.models import MODELS


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    factory = MODELS.get("mlp")
    model = factory.build(factory.Params(width=64, depth=2), (1, 8, 8), 10)
    x = torch.rand(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    return model, x, y


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("linf", 0.3), ("l2", 0.5), ("l2", 2.0)])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_ball_and_box_and_never_lowers_loss(
    model_and_data, norm: str, eps: float, random_start: bool
) -> None:
    model, x, y = model_and_data
    x_adv = pgd(model, x, y, eps=eps, norm=norm, steps=10, random_start=random_start, restarts=2)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (
            F.cross_entropy(model(x_adv), y, reduction="none") >= F.cross_entropy(model(x), y, reduction="none") - 1e-7
        ).all()


def test_pgd_raises_the_loss_and_leaves_parameter_gradients_alone(model_and_data) -> None:
    model, x, y = model_and_data
    model.zero_grad(set_to_none=True)
    x_adv = pgd(model, x, y, eps=0.2, norm="linf", steps=10)
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 0.05


def test_pgd_with_zero_eps_returns_the_input_and_keeps_train_mode(model_and_data) -> None:
    model, x, y = model_and_data
    model.train()
    assert torch.equal(pgd(model, x, y, eps=0.0, norm="l2", steps=5), x)
    pgd(model, x, y, eps=0.1, norm="l2", steps=2)
    assert model.training


def test_unbounded_inputs_are_not_clamped() -> None:
    model = torch.nn.Linear(5, 2)
    x = torch.full((4, 5), 3.0)
    x_adv = pgd(model, x, torch.zeros(4, dtype=torch.long), eps=1.0, norm="l2", steps=5, bounds=None)
    assert x_adv.max() > 1.0

"""IBP / CROWN / CROWN-IBP bounds: containment of sampled outputs, CROWN vs IBP, the relaxed optimum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from certstudy.certify.bounds import (
    Ball,
    backward,
    crown,
    crown_ibp,
    ibp,
    margin_lower_bounds,
    margin_spec,
    relaxed_forward,
)
from certstudy.certify.network import layers_of
from certstudy.methods import METHODS, MethodContext
from conftest import ball_samples

SHAPE = (1, 8, 8)


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 6))
    cnn = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 6),
    )
    return {"mlp": mlp.eval(), "cnn": cnn.eval()}


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.3)])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_bounds_contain_sampled_outputs(arch: str, norm: str, eps: float) -> None:
    model = _models()[arch]
    layers = layers_of(model, SHAPE)
    x = torch.rand(8, *SHAPE)
    ball = Ball.of(x, eps, norm, (0.0, 1.0))  # type: ignore[arg-type]
    xs = ball_samples(x, eps, norm, 1500)
    with torch.no_grad():
        out = model(xs.flatten(0, 1)).view(1500, len(x), -1)
        lo, hi = ibp(layers, ball)[1]
        assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
        # CROWN bounds of every logit (identity spec), lower and upper
        bounds = ibp(layers, ball)[0]
        eye = torch.eye(6).view(1, 6, 6)
        full = backward(layers, len(layers) - 1, eye, bounds, ball)
        assert (out >= full.lower - 1e-5).all() and (out <= full.upper + 1e-5).all()
        top = model(x).argmax(1)
        margins = out.gather(2, top.view(1, -1, 1).expand(1500, -1, 1)) - out
        for method in ("ibp", "crown"):
            lower = margin_lower_bounds(method, layers, ball, top, 6)
            lower = lower.masked_fill(torch.isinf(lower), -torch.inf)  # the class's own margin is not bounded
            assert (margins >= lower.unsqueeze(0) - 1e-5).all(), method


@pytest.mark.parametrize("norm,eps", [("linf", 0.02), ("l2", 0.2)])
def test_crown_is_no_looser_than_ibp_on_average(norm: str, eps: float) -> None:
    for arch, model in _models().items():
        layers = layers_of(model, SHAPE)
        x = torch.rand(32, *SHAPE)
        ball = Ball.of(x, eps, norm, (0.0, 1.0))  # type: ignore[arg-type]
        top = model(x).argmax(1)
        with torch.no_grad():
            lb_ibp = margin_lower_bounds("ibp", layers, ball, top, 6)
            lb_crown = margin_lower_bounds("crown", layers, ball, top, 6)
        finite = torch.isfinite(lb_ibp)
        assert lb_crown[finite].mean() >= lb_ibp[finite].mean(), arch
        spec = margin_spec(top, 6)
        with torch.no_grad():
            full = crown(layers, ball, spec).scatter(1, top[:, None], torch.inf)
            mixed = crown_ibp(layers, ball, spec)[1].lower.scatter(1, top[:, None], torch.inf)
        assert (lb_crown >= full).all() and (lb_crown >= mixed).all()
        assert torch.equal(lb_crown, torch.maximum(torch.maximum(full, mixed), lb_ibp))


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_the_crown_certificate_is_never_looser_than_ibp_on_any_margin(norm: str, eps: float) -> None:
    """200 random instances (4 nets x 50 points): every margin's CROWN lower bound >= IBP's."""
    gen = torch.Generator().manual_seed(11)
    for seed in range(4):
        torch.manual_seed(seed)
        model = _models()["mlp" if seed % 2 else "cnn"]
        for p in model.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.5
        layers = layers_of(model, SHAPE)
        x = torch.rand(50, *SHAPE, generator=gen)
        ball = Ball.of(x, eps, norm, (0.0, 1.0))  # type: ignore[arg-type]
        with torch.no_grad():
            top = model(x).argmax(1)
            lb_ibp = margin_lower_bounds("ibp", layers, ball, top, 6)
            lb_crown = margin_lower_bounds("crown", layers, ball, top, 6)
        finite = torch.isfinite(lb_ibp)  # the predicted class's own margin is +inf in both
        assert (lb_crown[finite] >= lb_ibp[finite]).all(), (seed, norm)
        assert torch.equal(torch.isfinite(lb_crown), finite)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_relaxed_optimum_reproduces_the_bound_and_gap_is_nonnegative(norm: str) -> None:
    model = _models()["cnn"]
    layers = layers_of(model, SHAPE)
    x = torch.rand(16, *SHAPE)
    eps = 0.03 if norm == "linf" else 0.3
    ball = Ball.of(x, eps, norm, (0.0, 1.0) if norm == "linf" else None)
    y = torch.randint(0, 6, (16,))
    spec = margin_spec(y, 6)
    with torch.no_grad():
        _, bound = crown_ibp(layers, ball, spec, record=True)
        relaxed, infeasibility = relaxed_forward(layers, bound)
        assert torch.allclose((spec * relaxed).sum(-1), bound.lower, atol=1e-4)  # the relaxed network at x* attains lb
        real = model(bound.x_star.flatten(0, 1)).view(16, 6, -1)
        gap = (spec * real).sum(-1) - bound.lower
    assert (gap >= -1e-4).all() and (infeasibility >= 0).all()
    assert gap.mean() > 0 and infeasibility.mean() > 0  # an untrained network is not tight


def test_crown_ibp_loss_trains_and_reports_regularizers() -> None:
    model = _models()["cnn"].train()
    cls = METHODS.get("crown_ibp")
    method = cls(
        cls.Params(eps=0.05, beta_start=1.0, beta_end=1.0, gap_weight=0.5, feasibility_weight=0.1),
        MethodContext(6, SHAPE, (0.0, 1.0), torch.device("cpu"), 4),
    )
    method.on_epoch_start(model, 0)
    assert method.eps == pytest.approx(0.05 / 2)  # ramp over half of 4 epochs: 1/2 of eps after the first
    x, y = torch.rand(16, *SHAPE), torch.randint(0, 6, (16,))
    loss = method.loss(model, x, y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    stats = method.epoch_metrics()
    assert stats["train/crown_ibp_gap"] >= 0 and stats["train/crown_ibp_infeasibility"] >= 0
    assert cls.certifier_defaults(cls.Params(norm="l2")) == {"ibp": {"norm": "l2"}, "crown": {"norm": "l2"}}


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 5, 3, stride=2, padding=1),
        nn.Conv2d(3, 4, 4, stride=2, padding=1),
        nn.Conv2d(2, 3, 3, stride=3, padding=2),
        nn.Conv2d(2, 2, 3, padding="same"),
    ],
)
def test_conv_transpose_matches_the_autograd_adjoint(conv: nn.Conv2d) -> None:
    from certstudy.certify.network import layer_for

    in_shape = (conv.in_channels, 9, 9)
    out_shape = tuple(conv(torch.zeros(1, *in_shape)).shape[1:])
    layer = layer_for(conv, in_shape, out_shape)
    v = torch.randn(7, *out_shape)
    assert torch.allclose(layer.transpose(v), layer.adjoint(v), atol=1e-5)


def test_folded_ibp_margins_equal_the_generic_spec_path() -> None:
    from certstudy.certify.bounds import ibp_margins

    for model in _models().values():
        layers = layers_of(model, SHAPE)
        x = torch.rand(10, *SHAPE)
        ball = Ball.of(x, 0.03, "linf", (0.0, 1.0))
        classes = torch.randint(0, 6, (10,))
        generic = ibp(layers, ball, margin_spec(classes, 6))[1][0]
        assert torch.allclose(ibp_margins(layers, ball, classes), generic, atol=1e-5)

"""IBP / CROWN / CROWN-IBP bounds: containment of sampled outputs, CROWN vs IBP, the relaxed optimum."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


# --- exact l2 ball ∩ box, and certificates that rounding cannot fool (issue: hardening, 14-15) -----


def _reference_l2_box_minimum(a: np.ndarray, x0: np.ndarray, eps: float, lo: float, hi: float) -> float:
    """min a·x over the l2 ball ∩ box by scipy's SLSQP (an independent solver) from two starts, its
    answer pulled back into the ball: the value of a feasible point, so never below the minimum."""
    from scipy.optimize import minimize

    best = np.inf
    starts = [x0, np.clip(x0 - eps * a / max(np.linalg.norm(a), 1e-12), lo, hi)]
    for start in starts:
        res = minimize(
            lambda x: a @ x,
            start,
            jac=lambda x: a,
            bounds=[(lo, hi)] * len(a),
            constraints=[
                {"type": "ineq", "fun": lambda x: eps**2 - ((x - x0) ** 2).sum(), "jac": lambda x: -2 * (x - x0)}
            ],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        step = np.clip(res.x, lo, hi) - x0  # into the box, then the ball (x0 is in the box: the box still holds)
        x = x0 + step * min(1.0, eps / max(float(np.linalg.norm(step)), 1e-300))
        best = min(best, float(a @ x))
    return best


def test_the_l2_ball_box_minimum_is_exact_and_never_below_either_old_bound() -> None:
    from certstudy.certify.bounds import l2_box_minimum

    rng = np.random.default_rng(0)
    gained = []
    for _ in range(60):
        d = int(rng.integers(3, 12))
        x0 = rng.uniform(0, 1, d) * (rng.uniform(size=d) > 0.4)  # many coordinates on the box's edge
        a = rng.normal(size=d) * rng.choice([0.1, 1.0, 10.0])
        eps = float(rng.uniform(0.05, 1.5))
        value, star = l2_box_minimum(
            torch.tensor(a).view(1, 1, d),
            torch.tensor(x0).view(1, 1, d),
            torch.tensor([[eps]], dtype=torch.float64),
            (0.0, 1.0),
        )
        value, star = float(value), star.view(-1).numpy()
        exact = _reference_l2_box_minimum(a, x0, eps, 0.0, 1.0)
        assert value <= exact + 1e-12, (value, exact)  # sound: below a feasible point's value
        assert value >= exact - 1e-6 * (1 + abs(exact)), (value, exact)  # tight
        assert ((star - x0) ** 2).sum() <= eps**2 * (1 + 1e-9) and star.min() >= 0 and star.max() <= 1  # feasible
        ball_only = a @ x0 - eps * np.linalg.norm(a)
        box_only = np.minimum(a * 0, a).sum()
        assert value >= max(ball_only, box_only) - 1e-9
        gained.append(value - max(ball_only, box_only))
    assert max(gained) > 0.1  # the intersection is tighter than either set alone where both bind


def _affine_region_net(rng: np.random.Generator, d: int = 6, h: int = 8, m: int = 4) -> nn.Sequential:
    """Linear-ReLU-Linear whose ReLUs stay active on the unit box (large first-layer biases) and whose
    logits are of order 100: on the box the network is affine, so its exact margins are known."""
    net = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, m))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(rng.normal(size=(h, d)), dtype=torch.float32))
        net[0].bias.copy_(torch.tensor(40 + rng.uniform(size=h), dtype=torch.float32))
        net[2].weight.copy_(torch.tensor(rng.normal(size=(m, h)), dtype=torch.float32))
        net[2].bias.copy_(torch.tensor(rng.normal(size=m), dtype=torch.float32))
    return net


def _exact_linf_margin_minimum(net: nn.Sequential, x0: np.ndarray, c: int, eps: float) -> tuple[float, int]:
    """(min over the l-inf eps-ball of min_i (y_c - y_i), its i), in float64 from the float32 weights."""
    w1, b1 = (t.detach().double().numpy() for t in (net[0].weight, net[0].bias))
    w2, b2 = (t.detach().double().numpy() for t in (net[2].weight, net[2].bias))
    best = (np.inf, -1)
    for i in range(w2.shape[0]):
        if i == c:
            continue
        g = (w2[c] - w2[i]) @ w1
        value = g @ x0 - eps * np.abs(g).sum() + (w2[c] - w2[i]) @ b1 + b2[c] - b2[i]
        best = min(best, (float(value), i))
    return best


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_point_within_a_millionth_of_the_boundary_is_certified_only_on_the_right_side(dtype: torch.dtype) -> None:
    """Radii chosen so the exact margin minimum is -1e-6 (not robust) or +1e-6 (robust) with logits
    near 100: the CROWN certificate (exact on an affine region) must refuse the first and may take
    the second. float32 bounds certified points of the first kind. The certificate is for the network
    in its own dtype: a float64 model takes the second kind; a float32 one cannot (its own rounding of
    logits near 100, about 1e-5, exceeds the margin), and must still refuse the first."""
    from certstudy.certify.base import CertifierContext
    from certstudy.certify.bounds import BoundParams, CROWNCertifier

    rng = np.random.default_rng(1)
    wrong = certified_right = 0
    for trial in range(40):
        net = _affine_region_net(rng)
        x0 = rng.uniform(0.3, 0.7, 6).astype(np.float32).astype(np.float64)  # the point as the model sees it
        c = int(net(torch.tensor(x0, dtype=torch.float32)[None]).argmax())
        with torch.no_grad():  # shift class c's bias so that its margin reaches 0 near eps 0.1 (inside the box)
            for _ in range(60):
                net[2].bias[c] -= _exact_linf_margin_minimum(net, x0, c, 0.1)[0]
        # the radius where the exact minimum margin crosses zero, then a millionth either side
        lo, hi = 0.0, 0.3
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _exact_linf_margin_minimum(net, x0, c, mid)[0] > 0 else (lo, mid)
        for target, robust in ((-1e-6, False), (1e-6, True)):
            eps = lo
            for _ in range(100):  # solve min(eps) = target: the minimum is piecewise linear in eps
                value = _exact_linf_margin_minimum(net, x0, c, eps)[0]
                g = (_exact_linf_margin_minimum(net, x0, c, eps + 1e-7)[0] - value) / 1e-7
                eps = eps + (target - value) / g
            assert abs(_exact_linf_margin_minimum(net, x0, c, eps)[0] - target) < 1e-9
            context = CertifierContext(4, (6,), (0.0, 1.0), torch.device("cpu"), radii={"linf": [eps]})
            cert = CROWNCertifier(BoundParams(norm="linf"), context)
            deployed = copy.deepcopy(net).to(dtype)
            result = cert.certify(deployed, torch.tensor(x0, dtype=torch.float32)[None], torch.tensor([c]), seed=0)
            radius = float(result.certificates[0].radii[0])
            if not robust:
                wrong += radius == eps
            else:
                certified_right += radius == eps
    assert wrong == 0, f"{wrong} of 40 non-robust points certified"
    if dtype == torch.float64:
        assert certified_right >= 35, certified_right  # the tolerance does not swallow a 1e-6 margin


def _bn_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(256, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 6),
    )


def test_crown_ibp_training_bounds_its_first_batch_with_that_batch_statistics() -> None:
    """The statistics hook used to be registered after the first clean forward pass: step 1 was bounded
    with the running statistics, and its lower bounds exceeded the training network's true margins."""
    from certstudy.certify.network import BATCH_STATS

    model = _bn_model().train()
    ctx = MethodContext(6, SHAPE, (0.0, 1.0), torch.device("cpu"), 2)
    method = METHODS.get("crown_ibp")(METHODS.get("crown_ibp").Params(eps=0.01, beta_start=1.0), ctx)
    method.on_epoch_start(model, 1)
    x = torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    y = torch.randint(0, 6, (32,), generator=torch.Generator().manual_seed(1))
    method.loss(model, x, y)
    for bn in (model[1], model[5]):
        recorded = getattr(bn, BATCH_STATS, None)
        assert recorded is not None  # recorded by the first forward pass already
    mean = model[0](x).mean((0, 2, 3))
    assert torch.allclose(getattr(model[1], BATCH_STATS)[0], mean)
    layers = method._layers
    with torch.no_grad():
        logits = model(x)  # the training network on this batch (its own batch statistics)
        spec = margin_spec(y, 6)
        ibp_lower, bound = crown_ibp(layers, Ball.of(x, 0.01, "linf", (0.0, 1.0)), spec)
    margins = (spec * logits.unsqueeze(1)).sum(-1)
    assert (bound.lower <= margins + 1e-5).all() and (ibp_lower <= margins + 1e-5).all()


def test_a_centre_outside_the_data_box_is_never_certified() -> None:
    """A pixel at 1.3 used to get an IBP radius although ball ∩ box is empty there."""
    from certstudy.certify import CERTIFIERS, CertifierContext
    from certstudy.certify.bounds import OutsideBox

    model = _models()["mlp"]
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    x[0, 0, 0, 0] = 1.3
    x[1, 0, 3, 3] = -0.2
    with pytest.raises(OutsideBox):
        Ball.of(x, 0.1, "linf", (0.0, 1.0))
    ctx = CertifierContext(6, SHAPE, (0.0, 1.0), torch.device("cpu"), {"linf": [0.001, 0.2], "l2": [0.01, 0.5]})
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.01)  # every point is far from the decision boundary: inside the box they certify
    for name in ("ibp", "crown"):
        for norm in ("linf", "l2"):
            cls = CERTIFIERS.get(name)
            (cert,) = (
                cls(cls.Params(norm=norm), ctx).certify(model, x, torch.zeros(4, dtype=torch.long), seed=0).certificates
            )
            assert torch.isnan(cert.radii[:2]).all() and (cert.predictions[:2] == -1).all(), (name, norm)
            assert not torch.isnan(cert.radii[2:]).any(), (name, norm)


def _rounding_flip_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float32 net whose exact margin is positive on a whole ball while float32 rounding flips its
    prediction inside it: logits 1024 + x and 1024 + (1 + 2^-22) x differ by 2^-22 x exactly, less than
    float32's spacing at 1024 (2^-13), so which one rounds up depends on x. Returns (net, x, x_flip)."""
    net = nn.Sequential(nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [1.0 + 2.0**-22]]))
        net[0].bias.fill_(1024.0)
    x = torch.tensor([[0.5 + 2.0**-14 - 2.0**-24]], dtype=torch.float32)
    with torch.no_grad():
        assert int(net(x).argmax()) == 1
        for k in range(1, 4):
            flip = x - k * 2.0**-24
            if int(net(flip).argmax()) != 1:
                return net, x, flip
    raise AssertionError("no float32 flip near x: the construction's premise failed")


@pytest.mark.parametrize("name,norm", [("ibp", "linf"), ("crown", "linf"), ("crown", "l2"), ("lipschitz", "l2")])
def test_certificates_hold_for_the_float32_network_that_predicts(name: str, norm: str) -> None:
    """The certifiers bounded the float64 copy (or float32 logits with no slack) and certified a ball in
    which the deployed float32 network changes its prediction."""
    from certstudy.certify import CERTIFIERS, CertifierContext

    net, x, flip = _rounding_flip_net()
    distance = float((flip - x).abs().max())
    radius = 2 * distance
    cls = CERTIFIERS.get(name)
    params = cls.Params(norm=norm) if name != "lipschitz" else cls.Params()
    ctx = CertifierContext(2, (1,), (0.0, 1.0), torch.device("cpu"), {norm: [radius]})
    (cert,) = cls(params, ctx).certify(net, x, torch.tensor([1]), seed=0).certificates
    r = float(cert.radii[0])
    assert not (r >= distance), (name, norm, r, distance)  # NaN (uncertified) or a radius short of the flip
    # the same network in float64 has no such rounding: there the exact margin certifies the ball
    (cert64,) = cls(params, ctx).certify(copy.deepcopy(net).double(), x, torch.tensor([1]), seed=0).certificates
    assert float(cert64.radii[0]) >= distance, (name, norm)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_the_fused_loss_bounds_the_worst_case_loss_on_every_training_batch(norm: str, eps: float) -> None:
    """Loss fusion (one backward row per example) trains, and on each of 12 batches of a run its per-example
    bound is above the cross-entropy at every sampled and PGD-attacked point of the ball. Its relation
    to the unfused CE(-lb_CROWN-IBP) is reported by bench/certify_cost.py (neither is always lower)."""
    from certstudy.certify.bounds import fused_cross_entropy_bound

    torch.manual_seed(0)
    model = _models()["cnn"].train()
    cls = METHODS.get("crown_ibp")
    ctx = MethodContext(6, SHAPE, (0.0, 1.0), torch.device("cpu"), 2)
    method = cls(cls.Params(eps=eps, norm=norm, beta_start=1.0, beta_end=1.0, loss_fusion=True), ctx)
    method.on_epoch_start(model, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    layers = layers_of(model, SHAPE)
    gen = torch.Generator().manual_seed(3)
    for _ in range(12):
        x, y = torch.rand(16, *SHAPE, generator=gen), torch.randint(0, 6, (16,), generator=gen)
        loss = method.loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            ball = Ball.of(x, eps, norm, (0.0, 1.0))  # type: ignore[arg-type]
            spec = margin_spec(y, 6)
            pre, margins = ibp(layers, ball, spec)
            fused = fused_cross_entropy_bound(layers, ball, pre, margins, y, model(x))
            points = ball_samples(x, eps, norm, 64)
            worst = F.cross_entropy(model(points.flatten(0, 1)), y.repeat(64), reduction="none").view(64, -1).amax(0)
        attacked = x.clone()
        for _ in range(10):  # PGD on the cross-entropy, projected on the ball ∩ box
            attacked.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(attacked), y, reduction="sum"), attacked)
            with torch.no_grad():
                if norm == "linf":
                    attacked = (attacked + eps / 4 * grad.sign()).clamp(x - eps, x + eps)
                else:
                    step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                    delta = attacked + eps / 4 * step - x
                    delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(eps)).view(-1, 1, 1, 1)
                    attacked = x + delta
                attacked = attacked.clamp(0, 1)
        with torch.no_grad():
            worst = torch.maximum(worst, F.cross_entropy(model(attacked), y, reduction="none"))
        assert (fused >= worst - 1e-5).all(), float((worst - fused).max())
    assert method.epoch_metrics()["train/crown_ibp_robust_ce"] > 0


def test_loss_fusion_is_refused_with_the_tightness_regularizers() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="loss_fusion"):
        METHODS.get("crown_ibp").Params(loss_fusion=True, gap_weight=0.1)

"""Global Lipschitz bounds (GloRo): spectral norms, margin constants, exact radii, ties, the ⊥ logit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certstudy.certify import CERTIFIERS, CertifierContext
from certstudy.certify.lipschitz import PowerIterates, bottom_logit, lipschitz_radii, margin_constants, spectral_norm
from certstudy.certify.network import Layer, UnsupportedLayer, layer_for, layers_of
from certstudy.methods import METHODS, MethodContext


def _layer(module: nn.Module, in_shape: tuple[int, ...]) -> Layer:
    with torch.no_grad():
        out = module(torch.zeros(1, *in_shape, dtype=next(module.parameters(), torch.zeros(())).dtype))
    return layer_for(module, in_shape, tuple(out.shape[1:]))


def _materialised(module: nn.Module, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The layer's matrix from autograd's Jacobian (independent of the code under test)."""
    n = math.prod(in_shape)
    jac = torch.autograd.functional.jacobian(
        lambda v: module(v.view(1, *in_shape)).flatten(), torch.zeros(n, dtype=torch.float64)
    )
    return jac


def test_power_iteration_matches_exact_dense_norm() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(30, 20)
    layer = _layer(lin, (30,))
    exact = float(torch.linalg.matrix_norm(lin.weight.detach().double(), 2))
    it = PowerIterates([layer], torch.Generator().manual_seed(1))
    few = float(it.product().detach())
    assert few <= exact + 1e-6
    assert it.converge(1e-10, 5000) == pytest.approx(exact, rel=1e-4)
    assert spectral_norm(layer) == (pytest.approx(exact, rel=1e-12), True)


def test_strided_conv_norm_matches_svd_of_its_matrix() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1).double()
    layer = _layer(conv, (3, 9, 9))
    conv_nb = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False).double()
    conv_nb.weight.data.copy_(conv.weight.data)
    exact = float(torch.linalg.svdvals(_materialised(conv_nb, (3, 9, 9)))[0])
    value, is_exact = spectral_norm(layer)
    assert is_exact and value == pytest.approx(exact, rel=1e-9)
    it = PowerIterates([layer], torch.Generator().manual_seed(2))
    assert float(it.product().detach()) <= exact + 1e-9
    assert it.converge(1e-12, 5000) == pytest.approx(exact, rel=1e-4)
    # too large to materialise: the circulant bound, never below the exact norm
    approx, is_exact = spectral_norm(layer, max_exact_dim=10)
    assert not is_exact and exact <= approx <= exact * 1.05


CONVS = [
    (nn.Conv2d(3, 5, 3, stride=1, padding=1), (3, 7, 7)),
    (nn.Conv2d(3, 5, 3, stride=2, padding=1), (3, 9, 8)),
    (nn.Conv2d(4, 6, 4, stride=2, padding=1), (4, 10, 10)),
    (nn.Conv2d(2, 3, 5, stride=3, padding=2), (2, 11, 9)),
    (nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(0, 1)), (2, 8, 7)),
    (nn.Conv2d(2, 4, 3, dilation=2, padding=2), (2, 9, 9)),
    (nn.Conv2d(4, 4, 3, groups=2, padding=1, stride=2), (4, 8, 8)),
    (nn.Conv2d(3, 2, 4, stride=1, padding=0), (3, 6, 6)),
    (nn.AvgPool2d(2), (3, 6, 6)),
    (nn.AvgPool2d(3, stride=2, padding=1), (2, 7, 7)),
]


@pytest.mark.parametrize("index", range(len(CONVS)))
def test_the_circulant_bound_is_never_below_the_exact_norm(index: int) -> None:
    """Every norm above ``max_exact_dim`` is a guaranteed bound: strides, padding, dilation, groups,
    rectangular kernels and images, pooling; five random draws of each."""
    module, shape = CONVS[index]
    module = module.double()
    for seed in range(5):
        torch.manual_seed(seed)
        for p in module.parameters():
            p.data = torch.randn_like(p)
        layer = _layer(module, shape)
        exact = float(torch.linalg.svdvals(_materialised(module, shape))[0])  # a Jacobian: bias-free
        bound, is_exact = spectral_norm(layer, max_exact_dim=1)
        assert not is_exact and exact <= bound, (seed, exact, bound)


def test_the_circulant_bound_is_tight_on_an_mnist_gloro_net() -> None:
    """Within 2 % of the exact norm on GloRo 2C2F's convolutions at MNIST size (boundary effects only)."""
    from certstudy.models import MODELS

    factory = MODELS.get("gloro_2c2f")
    torch.manual_seed(0)
    model = factory.build(factory.Params(), (1, 28, 28), 10).double()
    convs = [layer for layer in layers_of(model, (1, 28, 28)) if isinstance(layer.module, nn.Conv2d)]
    for layer in convs:
        exact, _ = spectral_norm(layer, max_exact_dim=10**6)
        bound, _ = spectral_norm(layer, max_exact_dim=1)
        assert exact <= bound <= exact * 1.02, (layer.label, exact, bound)


def test_a_stalled_power_iterate_never_enters_a_certificate() -> None:
    """Power iteration started orthogonally to the top singular vector settles on the second one; the
    certifier used to take such a converged iterate times (1 + 1e-3) for layers above max_exact_dim."""
    u = torch.randn((1, 2, 1, 1), generator=torch.Generator().manual_seed(0)).flatten().double()
    v2 = u / u.norm()
    v1 = torch.stack([-v2[1], v2[0]])
    matrix = 2.0 * torch.outer(v1, v1) + 1.0 * torch.outer(v2, v2)  # sigma 2 along v1, 1 along v2 (= the start)
    conv = nn.Conv2d(2, 2, 1, bias=False)
    conv.weight.data = matrix.float().view(2, 2, 1, 1)
    layer = _layer(conv, (2, 1, 1))
    bound, is_exact = spectral_norm(layer, max_exact_dim=1)
    assert not is_exact and bound >= 2.0 - 1e-6


def test_average_pool_and_orthogonal_layer_constants() -> None:
    pool = _layer(nn.AvgPool2d(2), (2, 6, 6))
    assert spectral_norm(pool)[0] == pytest.approx(0.5, abs=1e-12)
    assert PowerIterates([pool]).converge(1e-12, 100) == pytest.approx(0.5, abs=1e-6)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))
    lin = nn.Linear(16, 16)
    lin.weight.data.copy_(q)
    assert spectral_norm(_layer(lin, (16,)))[0] == pytest.approx(1.0, abs=1e-6)


def test_unknown_layers_are_refused() -> None:
    with pytest.raises(UnsupportedLayer, match="Tanh"):
        layers_of(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), (4,))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 20),
        nn.ReLU(),
        nn.Linear(20, 5),
    )


def _certifier(name: str, classes: int = 5, shape: tuple[int, ...] = (1, 8, 8), **params: object):
    cls = CERTIFIERS.get(name)
    return cls(
        cls.Params(**params),
        CertifierContext(
            classes, shape, (0.0, 1.0), torch.device("cpu"), {"l2": [0.0, 0.05, 0.1, 0.2], "linf": [0.0, 0.01, 0.02]}
        ),
    )


def test_margin_constants_bound_the_margin_gradients() -> None:
    model = _cnn().eval()
    margin = _certifier("lipschitz").constants(model)
    constants, exact = margin.margin, margin.exact
    assert exact
    x = torch.rand(200, 1, 8, 8, requires_grad=True)
    out = model(x)
    for j in range(5):
        for i in range(5):
            if i == j:
                continue
            (grad,) = torch.autograd.grad((out[:, j] - out[:, i]).sum(), x, retain_graph=True)
            assert (grad.flatten(1).norm(dim=1).double() <= constants[j, i] * (1 + 1e-6)).all()


def test_linear_radius_is_exact() -> None:
    torch.manual_seed(3)
    lin = nn.Linear(6, 4)
    model = nn.Sequential(lin).eval()
    constants = _certifier("lipschitz", 4, (6,)).constants(model).margin
    x = torch.rand(1, 6, dtype=torch.float64)
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    logits = x @ w.T + b
    top, radii = lipschitz_radii(logits, constants)
    j = int(top)
    ratios = [(float(logits[0, j] - logits[0, i]) / float((w[j] - w[i]).norm()), i) for i in range(4) if i != j]
    r, i = min(ratios)
    assert float(radii) == pytest.approx(r, rel=1e-9)
    direction = (w[i] - w[j]) / (w[i] - w[j]).norm()
    assert int(((x + 0.999 * r * direction) @ w.T + b).argmax()) == j
    assert int(((x + 1.001 * r * direction) @ w.T + b).argmax()) != j


def test_equal_logits_are_not_certified() -> None:
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        lin.bias.zero_()
    model = nn.Sequential(lin)
    x = torch.tensor([[0.5, 0.1, 0.0, 0.0]])  # classes 0 and 1 tie for the top
    cls = CERTIFIERS.get("lipschitz")
    result = cls(cls.Params(), CertifierContext(3, (4,), (0.0, 1.0), torch.device("cpu"))).certify(
        model, x, torch.tensor([0]), seed=0
    )
    cert = result.certificates[0]
    assert torch.isnan(cert.radii).all() and int(cert.predictions[0]) == -1
    constants = margin_constants(1.0, lin.weight.detach())
    logits = model(x)
    assert float(bottom_logit(logits, constants, 0.0)) == float(logits.max())  # y_bot ties the top: not y_j > y_bot
    for name in ("ibp", "crown"):
        c = CERTIFIERS.get(name)
        out = c(
            c.Params(norm="l2"), CertifierContext(3, (4,), (0.0, 1.0), torch.device("cpu"), {"l2": [0.0, 0.1]})
        ).certify(model, x, torch.tensor([0]), seed=0)
        assert torch.isnan(out.certificates[0].radii).all()


def test_bottom_logit_agrees_with_radii_and_trades_identity() -> None:
    model = _cnn().eval()
    constants = _certifier("lipschitz").constants(model).margin
    x = torch.rand(300, 1, 8, 8)
    with torch.no_grad():
        logits = model(x).double()
    eps = 0.02
    top, radii = lipschitz_radii(logits, constants)
    y_bot = bottom_logit(logits, constants, eps)
    certified = logits.max(1).values > y_bot
    assert torch.equal(certified, torch.nan_to_num(radii, nan=0.0) > eps)
    probs = logits.softmax(1)
    augmented = torch.cat([logits, y_bot[:, None]], 1).softmax(1)[:, :-1]
    kl = (probs * (probs.log() - augmented.log())).sum(1)
    assert torch.allclose(kl, F.softplus(y_bot - torch.logsumexp(logits, 1)), atol=1e-9)


def test_gloro_training_keeps_iterates_and_reports_converged_constant() -> None:
    torch.manual_seed(0)
    cls = METHODS.get("gloro")
    method = cls(cls.Params(eps=0.3, loss="trades"), MethodContext(5, (1, 8, 8), (0.0, 1.0), torch.device("cpu"), 4))
    model = _cnn()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 5, (32,))
    for epoch in range(2):
        method.on_epoch_start(model, epoch)
        loss = method.loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        assert any(
            p.grad is not None and p.grad.abs().sum() > 0 for p in model[0].parameters()
        )  # the bound trains the conv
        opt.step()
    state = method.state_dict()
    assert len(state) == 4  # two convs, the pool and the hidden dense layer
    fresh = cls(method.params, method.context)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.iterates(model)[1].u[0], method.iterates(model)[1].u[0].detach())
    final = method.final_metrics(model, None, batch_size=64, seed=0)  # type: ignore[arg-type]
    assert final["test/gloro_k_sub_power"] <= final["test/gloro_k_sub_exact"] * (1 + 1e-6)
    assert final["test/gloro_k_sub_ratio"] > 0.9


def test_relu_must_follow_an_affine_layer() -> None:
    with pytest.raises(UnsupportedLayer, match="follow an affine layer"):
        layers_of(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)), (4,))

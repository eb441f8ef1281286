"""The papers' architectures and the layer kinds they bring to the certifiers (BatchNorm, MinMax, MaxPool,
Normalize): parameter counts against their sources, soundness by sampling, exact spectral norms, and
refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from certstudy.certify.bounds import Ball, backward, crown_ibp, ibp, margin_lower_bounds, margin_spec
from certstudy.certify.lipschitz import margin_constants, sub_lipschitz
from certstudy.certify.network import INTERVAL, LIPSCHITZ, RELAXATION, UnsupportedLayer, forward, layer_for, layers_of
from certstudy.models import MODELS
from certstudy.models.base import build_model
from certstudy.models.layers import MinMax, Normalize
from conftest import ball_samples

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)

# Parameter counts: each from its source where it states one, else the arithmetic of its layer spec.
COUNTS = [
    # DM-small, Gowal et al. (VALID convs): 16·16+16, 32·16·16+32, (32·10·10)·100+100, 100·10+10
    ("dm_small", {}, MNIST, 272 + 8224 + 320100 + 1010),
    # DM-medium: 320, 16416, 18496, 65600 (26, 12, 10, 4 px), 1024·512+512, 512·512+512, 5130
    ("dm_medium", {}, MNIST, 320 + 16416 + 18496 + 65600 + 524800 + 262656 + 5130),
    # DM-large (SAME): 640, 36928, 73856, 147584, 147584, (128·14·14)·512+512, 5130
    ("dm_large", {}, MNIST, 640 + 36928 + 73856 + 147584 + 147584 + 12845568 + 5130),
    # CNN7 as DM-large plus BatchNorm (2 per channel) after each conv and FC512
    (
        "cnn7",
        {},
        MNIST,
        640 + 36928 + 73856 + 147584 + 147584 + 12845568 + 5130 + 2 * (64 + 64 + 128 + 128 + 128 + 512),
    ),
    # GloRo 2C2F: 272, 8224 (14, 7 px), (32·7·7)·100+100, 1010
    ("gloro_2c2f", {}, MNIST, 272 + 8224 + 156900 + 1010),
    # GloRo 4C3F: 320, 16416, 18496, 65600, (64·7·7)·512+512, 262656, 5130
    ("gloro_4c3f", {}, MNIST, 320 + 16416 + 18496 + 65600 + 1606144 + 262656 + 5130),
    # GloRo 6C2F on CIFAR: 896, 9248, 16416, 18496, 36928, 65600, (64·8·8)·512+512, 5130
    ("gloro_6c2f", {}, CIFAR, 896 + 9248 + 16416 + 18496 + 36928 + 65600 + 2097664 + 5130),
    # GloRo 8C2F on CIFAR: 1792, 36928, 65600, 73856, 147584, 262272, 295168, 1048832, (256·4·4)·256+256, 2570
    ("gloro_8c2f", {}, CIFAR, 1792 + 36928 + 65600 + 73856 + 147584 + 262272 + 295168 + 1048832 + 1048832 + 2570),
    ("lenet", {}, MNIST, 431_080),  # the classic LeNet-5 variant's count
    ("mnist_cnn", {}, MNIST, 1_199_882),  # pytorch/examples mnist: 320 + 18496 + 1179776 + 1290
    # kuangliu's PreActResNet18 (11,171,146) plus the final BatchNorm(512) of Rice et al.'s version
    ("preact_resnet18", {}, CIFAR, 11_171_146 + 1024),
    ("wide_resnet", {"depth": 28, "widen_factor": 10}, CIFAR, 36_479_194),  # WRN-28-10 (Zagoruyko & Komodakis: 36.5M)
    ("wide_resnet", {"depth": 34, "widen_factor": 10}, CIFAR, 46_160_474),  # WRN-34-10 (Madry et al. / TRADES: 46.2M)
]


@pytest.mark.parametrize("name,params,shape,count", COUNTS, ids=[f"{c[0]}-{c[1].get('depth', '')}" for c in COUNTS])
def test_parameter_count_matches_the_source(name: str, params: dict, shape: tuple[int, ...], count: int) -> None:
    factory = MODELS.get(name)
    with torch.device("meta"):
        model = factory.build(factory.Params(**params), shape, 10)
    assert sum(p.numel() for p in model.parameters()) == count


SMALL = {
    "preact_resnet18": {"width": 8},
    "wide_resnet": {"depth": 10, "widen_factor": 1},
    "cnn7": {"width": 8, "linear_size": 32},
}


@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["mnist", "cifar"])
@pytest.mark.parametrize(
    "name",
    [
        "dm_small",
        "dm_medium",
        "dm_large",
        "cnn7",
        "gloro_2c2f",
        "gloro_4c3f",
        "gloro_6c2f",
        "gloro_8c2f",
        "lenet",
        "mnist_cnn",
        "preact_resnet18",
        "wide_resnet",
    ],
)
def test_every_model_runs_forward_and_backward_on_its_dataset_shape(name: str, shape: tuple[int, ...]) -> None:
    factory = MODELS.get(name)
    torch.manual_seed(0)
    model = build_model(
        factory,
        factory.Params(**SMALL.get(name, {}), normalize=True),
        shape,
        10,
        ((0.5,) * shape[0], (0.25,) * shape[0]),
    )
    assert isinstance(model[0], Normalize)
    x = torch.rand(4, *shape)
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_gloro_nets_use_minmax_and_orthogonal_init_by_default() -> None:
    factory = MODELS.get("gloro_4c3f")
    model = factory.build(factory.Params(), MNIST, 10)
    assert sum(isinstance(m, MinMax) for m in model) == 6 and not any(isinstance(m, nn.ReLU) for m in model)
    dense = [m for m in model if isinstance(m, nn.Linear)][1]  # 512 x 512: orthogonal => singular values 1
    assert torch.allclose(torch.linalg.svdvals(dense.weight), torch.ones(512), atol=1e-4)
    relu = factory.build(factory.Params(activation="relu", init="default"), MNIST, 10)
    assert sum(isinstance(m, nn.ReLU) for m in relu) == 6


def test_minmax_sorts_channel_pairs() -> None:
    x = torch.tensor([[3.0, 1.0, -2.0, 5.0]])
    assert MinMax()(x).tolist() == [[1.0, 3.0, -2.0, 5.0]]
    img = torch.randn(2, 4, 3, 3)
    out = MinMax()(img)
    assert torch.equal(out[:, 0], torch.minimum(img[:, 0], img[:, 1])) and torch.equal(
        out[:, 3], torch.maximum(img[:, 2], img[:, 3])
    )


SHAPE = (1, 8, 8)


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.5, generator=gen)
                m.running_var.uniform_(0.2, 3.0, generator=gen)
                m.weight.normal_(0, 1.5, generator=gen)  # some negative scales
                m.bias.normal_(0, 0.5, generator=gen)
    return model


def _nets(classes: int = 6) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    bn = nn.Sequential(
        Normalize((0.3,), (0.4,)), nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(128, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, classes),
    )  # fmt: skip
    minmax = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), MinMax(), nn.Conv2d(6, 8, 4, stride=2, padding=1), MinMax(),
        nn.Flatten(), nn.Linear(128, 24), MinMax(), nn.Linear(24, classes),
    )  # fmt: skip
    maxpool = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),  # overlapping windows
        nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, classes),
    )  # fmt: skip
    return {"batchnorm": _randomise_batchnorm(bn).eval(), "minmax": minmax.eval(), "maxpool": maxpool.eval()}


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.3)])
@pytest.mark.parametrize("arch", ["batchnorm", "minmax", "maxpool"])
def test_bounds_contain_1000_sampled_outputs_per_example(arch: str, norm: str, eps: float) -> None:
    model = _nets()[arch]
    layers = layers_of(model, SHAPE, frozenset({INTERVAL, RELAXATION}))
    x = torch.rand(6, *SHAPE)
    ball = Ball.of(x, eps, norm, (0.0, 1.0))  # type: ignore[arg-type]
    n = 1200
    xs = ball_samples(x, eps, norm, n)
    tol = 1e-5
    with torch.no_grad():
        out = model(xs.flatten(0, 1)).view(n, len(x), -1)
        assert torch.allclose(
            forward(layers, xs.flatten(0, 1)).view(n, len(x), -1), out, atol=1e-5
        )  # the layers are the model
        lo, hi = ibp(layers, ball)[1]
        assert (out >= lo - tol).all() and (out <= hi + tol).all()
        top = model(x).argmax(1)
        margins = out.gather(2, top.view(1, -1, 1).expand(n, -1, 1)) - out
        for method in ("ibp", "crown"):
            lower = margin_lower_bounds(method, layers, ball, top, 6)
            lower = lower.masked_fill(torch.isinf(lower), -torch.inf)
            assert (margins >= lower.unsqueeze(0) - tol).all(), method
        eye = torch.eye(6).view(1, 6, 6)
        full = backward(layers, len(layers) - 1, eye, ibp(layers, ball)[0], ball)
        assert (out >= full.lower - tol).all() and (out <= full.upper + tol).all()
        ibp_lower, bound = crown_ibp(layers, ball, margin_spec(top, 6))
        assert (margins >= bound.lower.unsqueeze(0) - tol).all() and (margins >= ibp_lower.unsqueeze(0) - tol).all()


def test_minmax_relaxation_is_exact_when_every_pair_is_ordered() -> None:
    """With each pair's order fixed over the box, MinMax is a permutation and CROWN through it is exact."""
    layer = layer_for(MinMax(), (4,), (4,))
    lo = torch.tensor([[2.0, 0.0, -3.0, 1.0]])
    hi = torch.tensor([[3.0, 1.0, -2.0, 2.0]])
    a = torch.randn(1, 5, 4)
    for upper in (False, True):
        a_in, const, _ = layer.relax(a, *layer.relaxation_bounds(lo, hi), upper=upper)  # pair differences' bounds
        z = lo + torch.rand(50, 4) * (hi - lo)
        exact = (a.unsqueeze(0) * MinMax()(z).view(50, 1, 1, 4)).sum(-1)
        relaxed = (a_in.unsqueeze(0) * z.view(50, 1, 1, 4)).sum(-1) + const
        assert torch.allclose(exact, relaxed, atol=1e-6)


def _jacobian_norm(fn, shape: tuple[int, ...]) -> float:
    n = math.prod(shape)
    jac = torch.autograd.functional.jacobian(
        lambda v: fn(v.view(1, *shape)).flatten(), torch.zeros(n, dtype=torch.float64)
    )
    return float(torch.linalg.matrix_norm(jac, 2))


def test_batchnorm_and_normalize_norms_are_exact_spectral_norms() -> None:
    bn2 = _randomise_batchnorm(nn.BatchNorm2d(5)).eval().double()
    bn1 = _randomise_batchnorm(nn.BatchNorm1d(7)).eval().double()
    norm = Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0)).double()
    for module, shape in ((bn2, (5, 3, 3)), (bn1, (7,)), (norm, (3, 4, 4))):
        value, exact = layer_for(module, shape, shape).spectral_norm()
        assert exact and value == pytest.approx(_jacobian_norm(module, shape), rel=1e-9)
    assert layer_for(norm, (3, 4, 4), (3, 4, 4)).spectral_norm()[0] == pytest.approx(4.0)  # 1 / min std


def test_maxpool_constant_bounds_its_output_changes() -> None:
    gen = torch.Generator().manual_seed(0)
    for pool, expected in (
        (nn.MaxPool2d(2), 1.0),
        (nn.MaxPool2d(3, stride=2, padding=1), 2.0),
        (nn.MaxPool2d(3, stride=1), 3.0),
    ):
        layer = layer_for(pool, (2, 8, 8), tuple(pool(torch.zeros(1, 2, 8, 8)).shape[1:]))
        k = layer.spectral_norm()[0]
        assert k == pytest.approx(expected)
        x, y = torch.randn(500, 2, 8, 8, generator=gen), torch.randn(500, 2, 8, 8, generator=gen)
        y[:250] = x[:250] + 1e-2 * torch.randn(250, 2, 8, 8, generator=gen)
        ratio = (pool(x) - pool(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        assert (ratio <= k + 1e-6).all()


def test_minmax_net_lipschitz_constant_is_never_below_gradient_norms() -> None:
    torch.manual_seed(1)
    factory = MODELS.get("gloro_2c2f")
    model = factory.build(factory.Params(), (1, 16, 16), 10).double().eval()
    layers = layers_of(model, (1, 16, 16), frozenset({LIPSCHITZ}))
    k_sub, exact = sub_lipschitz(layers)
    constants = margin_constants(k_sub, layers[-1].module.weight.detach())
    x = torch.rand(200, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    logits = model(x)
    worst = 0.0
    for j in range(10):
        for i in range(10):
            if i != j:
                (grad,) = torch.autograd.grad((logits[:, j] - logits[:, i]).sum(), x, retain_graph=True)
                ratio = grad.flatten(1).norm(dim=1) / constants[j, i]
                worst = max(worst, float(ratio.max()))
    assert exact and 0.1 < worst <= 1 + 1e-9  # never above the bound, and not vacuous


def test_training_batchnorm_bounds_use_the_clean_batch_statistics() -> None:
    """CROWN-IBP training of a BN net: bounds describe the network normalised by the clean batch, and
    computing them never touches the running statistics."""
    factory = MODELS.get("cnn7")
    torch.manual_seed(0)
    model = factory.build(factory.Params(width=4, linear_size=16), SHAPE, 6).train()
    layers = layers_of(model, SHAPE, frozenset({INTERVAL, RELAXATION}))
    x = torch.rand(32, *SHAPE)
    logits = model(x)  # the clean forward pass records the batch statistics
    running = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn = next(layer for layer in layers if type(layer.module) is nn.BatchNorm2d)
    scale, shift = bn.scale_shift()
    first = model[0](x)
    mean, var = first.mean((0, 2, 3)), first.var((0, 2, 3), unbiased=False)
    assert torch.allclose(scale, model[1].weight / torch.sqrt(var + model[1].eps), atol=1e-5)
    assert torch.allclose(shift, model[1].bias - mean * scale, atol=1e-5)
    assert torch.allclose(forward(layers, x), logits, atol=1e-4)  # the layers replay the training-mode forward
    ball = Ball.of(x, 0.02, "linf", (0.0, 1.0))
    y = logits.argmax(1)
    ibp_lower, bound = crown_ibp(layers, ball, margin_spec(y, 6))
    xs = ball_samples(x, 0.02, "linf", 200)
    with torch.no_grad():
        out = forward(layers, xs.flatten(0, 1)).view(200, len(x), -1)
    margins = out.gather(2, y.view(1, -1, 1).expand(200, -1, 1)) - out
    assert (margins >= bound.lower.detach().unsqueeze(0) - 1e-4).all() and (
        margins >= ibp_lower.detach().unsqueeze(0) - 1e-4
    ).all()
    assert all(
        torch.equal(r, m.running_mean)
        for r, m in zip(running, (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)))
    )
    bound.lower.sum().backward()  # gradients reach the BN parameters through the recorded statistics
    assert model[1].weight.grad is not None


@pytest.mark.parametrize(
    "module,reason",
    [
        (nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), "padding_mode"),
        (nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), "padding_mode"),
        (nn.Conv2d(1, 2, 3, padding=1, padding_mode="replicate"), "padding_mode"),
        (nn.BatchNorm2d(2, track_running_stats=False), "running statistics"),
        (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
        (nn.Flatten(0), "start_dim"),
    ],
)
def test_configurations_the_walker_does_not_reproduce_are_refused(module: nn.Module, reason: str) -> None:
    model = (
        nn.Sequential(module, nn.Flatten(), nn.LazyLinear(3))
        if not isinstance(module, nn.Flatten)
        else nn.Sequential(module, nn.Linear(64, 3))
    )
    with pytest.raises(UnsupportedLayer, match=reason):
        layers_of(model, (1, 8, 8) if not isinstance(module, nn.BatchNorm2d) else (2, 8, 8))


def test_sequential_subclasses_are_not_walked_as_chains() -> None:
    class Doubling(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    with pytest.raises(UnsupportedLayer, match="Doubling"):
        layers_of(nn.Sequential(nn.Flatten(), Doubling(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2)), (4,))


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(3, stride=1)])
def test_maxpool_relaxation_is_sound_and_exact_where_one_input_dominates(pool: nn.MaxPool2d) -> None:
    shape = (2, 6, 6)
    layer = layer_for(pool, shape, tuple(pool(torch.zeros(1, *shape)).shape[1:]))
    gen = torch.Generator().manual_seed(0)
    centre = torch.randn(3, *shape, generator=gen)
    width = torch.rand(3, *shape, generator=gen) * 0.5
    lo, hi = centre - width, centre + width
    a = torch.randn(3, 4, *layer.out_shape, generator=gen)
    z = lo.unsqueeze(0) + torch.rand(500, *lo.shape, generator=gen) * (hi - lo).unsqueeze(0)  # points of the box
    exact = (a.unsqueeze(0) * pool(z.flatten(0, 1)).view(500, 3, 1, *layer.out_shape)).flatten(3).sum(-1)
    for upper in (False, True):
        a_in, const, _ = layer.relax(a, lo, hi, upper=upper)
        linear = (a_in.unsqueeze(0) * z.unsqueeze(2)).flatten(3).sum(-1) + const
        assert ((exact <= linear + 1e-5) if upper else (exact >= linear - 1e-5)).all()
    point = lo.clone()  # a degenerate box: every window's max is fixed, and the relaxation is exact
    a_in, const, _ = layer.relax(a, point, point, upper=False)
    value = (a * pool(point).unsqueeze(1)).flatten(2).sum(-1)
    assert torch.allclose((a_in * point.unsqueeze(1)).flatten(2).sum(-1) + const, value, atol=1e-5)


@pytest.mark.parametrize("arch", ["batchnorm", "minmax", "maxpool"])
def test_trained_nets_of_each_new_layer_kind_pass_the_soundness_audit(arch: str) -> None:
    """Trained on digits, every deterministic certificate of a BatchNorm, MinMax or MaxPool net survives
    a 50-step, 5-restart PGD at each point's certified radius."""
    from certstudy.certify import CERTIFIERS, CertifierContext
    from certstudy.certify.audit import audit
    from certstudy.data import DATASETS

    ds = DATASETS.get("digits")
    s = ds.load(ds.Params(), 0, "/nonexistent")
    model = _nets(classes=10)[arch].train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        order = torch.randperm(len(s.y_train), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(s.floats(s.x_train[idx])), s.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    x, y = s.floats(s.x_test[:120]), s.y_test[:120]
    assert (model(x).argmax(1) == y).float().mean() > 0.8
    radii = {"linf": [0.0, 0.0005, 0.002, 0.005, 0.01, 0.02], "l2": [0.0, 0.002, 0.005, 0.02, 0.05, 0.1, 0.2]}
    context = CertifierContext(10, SHAPE, (0.0, 1.0), torch.device("cpu"), radii)
    for name, params in [
        ("ibp", {"norm": "linf"}),
        ("ibp", {"norm": "l2"}),
        ("crown", {"norm": "linf"}),
        ("crown", {"norm": "l2"}),
        ("lipschitz", {}),
    ]:
        cls = CERTIFIERS.get(name)
        (cert,) = cls(cls.Params(**params), context).certify(model, x, y, seed=0).certificates
        found = audit(model, x, cert, steps=50, restarts=5, bounds=(0.0, 1.0), seed=0)
        assert found.points > 0, f"{name} {params}: nothing certified, the audit would check nothing"
        assert found.violations == 0, (name, params, found.violating_indices)


@pytest.mark.parametrize("certifier", ["ibp", "crown", "lipschitz"])
def test_a_model_in_another_dtype_than_its_data_is_certified_not_a_runtime_error(certifier: str) -> None:
    from certstudy.certify import CERTIFIERS
    from certstudy.certify.base import CertifierContext

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.rand(5, 1, 4, 4)  # float32 data
    cls = CERTIFIERS.get(certifier)
    params = cls.Params(**({"norm": "l2"} if certifier != "lipschitz" else {}))
    context = CertifierContext(3, (1, 4, 4), (0.0, 1.0), torch.device("cpu"), radii={"l2": [0.01, 0.05]})
    result = cls(params, context).certify(model, x, torch.zeros(5, dtype=torch.long), seed=0)
    assert len(result.certificates[0].radii) == 5
    assert (result.certificates[0].predictions == model(x.double()).argmax(1)).sum() >= 1

"""Global Lipschitz margin bounds (GloRo, Leino et al. 2021) and the ``lipschitz`` certifier.

The margin y_j - y_i of a chain of layers is K_ji-Lipschitz in l2 with K_ji = K_sub * ||w_j - w_i||,
K_sub the product of the l2 Lipschitz constants of every layer below the last (spectral norms of
the affine layers, BatchNorm's max |scale|, 1 for ReLU and MinMax, sqrt of the window overlap for
max pooling) and w the last layer's rows. A point predicted j is certified at every radius below
min_{i != j} (y_j - y_i) / K_ji.

Written here because no maintained library fits: the reference GloRo is TensorFlow-only and
auto_LiRPA's registry releases (0.2, 0.3) do not run on torch 2. Soundness rests on
the spectral norms being upper bounds, so the certifier never uses a power iterate (an estimate
from below until it converges, training's or its own): each norm is exact (the SVD of a Linear
weight, or of the materialised matrix of a convolution or pooling layer whose input size is at
most ``max_exact_dim``), else a guaranteed upper bound for a larger convolution or pooling layer
(its circulant embedding, ``certify/network.py``; reported as ``lipschitz_exact = 0``), each
raised by an allowance for the SVD's float64 rounding. Ties are masked by index: a runner-up equal
to the top logit gives a zero margin, and a zero margin is never certified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from pydantic import Field
from torch import Tensor, nn

from certstudy import phases
from certstudy.certify.base import ABSTAIN, Certificate, Certifier, CertifierParams, CertifyResult
from certstudy.certify.bounds import in_float64, rounding_tolerance
from certstudy.certify.network import LIPSCHITZ, AffineLayer, Layer, deployment_error, layers_of, unit_roundoff
from certstudy.certify.registry import CERTIFIERS
from certstudy.models.base import eval_mode


def has_norm(layer: Layer) -> bool:
    """Layers whose norm GloRo training estimates with a power iterate (the others have a known constant)."""
    return isinstance(layer, AffineLayer) and layer.power_iterated


class PowerIterates:
    """One persistent, gradient-free iterate per power-iterated layer (GloRo's power method).

    ``sigma`` is ||W u|| / ||u|| at the current iterate, differentiable in W only; it approaches
    the spectral norm from below as the iterates converge. Layers with a known constant (ReLU,
    MinMax, Flatten: 1; MaxPool: sqrt of its window overlap) enter ``product`` as that constant.
    """

    def __init__(self, layers: list[Layer], generator: torch.Generator | None = None) -> None:
        self.layers: list[AffineLayer] = [layer for layer in layers if has_norm(layer)]  # type: ignore[misc]
        self.constant = math.prod(layer.spectral_norm()[0] for layer in layers if not has_norm(layer))
        param = next((p for layer in layers for p in layer.module.parameters()), torch.zeros(()))
        self.u = [_normalise(torch.randn((1, *layer.in_shape), generator=generator).to(param)) for layer in self.layers]

    @torch.no_grad()
    def step(self, iterations: int = 1) -> None:
        for _ in range(iterations):
            self.u = [_normalise(layer.adjoint(layer.linear(u))) for layer, u in zip(self.layers, self.u)]

    def sigmas(self) -> list[Tensor]:
        return [layer.linear(u).flatten().norm() / u.flatten().norm() for layer, u in zip(self.layers, self.u)]

    def product(self) -> Tensor:
        out = torch.full((), self.constant, device=self.u[0].device) if self.u else torch.full((), self.constant)
        for s in self.sigmas():
            out = out * s
        return out

    @torch.no_grad()
    def converge(self, tol: float, max_iterations: int) -> float:
        """Iterates until the product changes by less than ``tol`` (relative); returns it."""
        last = float(self.product())
        for _ in range(max_iterations):
            self.step()
            now = float(self.product())
            if abs(now - last) <= tol * max(abs(now), 1e-30):
                return now
            last = now
        return last

    def state(self) -> list[Tensor]:
        return [u.detach().cpu() for u in self.u]

    def load(self, state: list[Tensor]) -> None:
        self.u = [s.to(u.device) for s, u in zip(state, self.u)]


def _normalise(u: Tensor) -> Tensor:
    return u / u.flatten().norm().clamp_min(1e-30)


@torch.no_grad()
def spectral_norm(layer: Layer, *, max_exact_dim: int = 4096) -> tuple[float, bool]:
    """(a guaranteed upper bound on ||layer||_2, whether it is the exact norm): each layer kind's own
    (``certify/network.py``): SVD of a dense or materialised matrix where it fits, else the circulant
    bound of a convolution."""
    return layer.spectral_norm(max_exact_dim=max_exact_dim)


def sub_lipschitz(layers: list[Layer], **options: int) -> tuple[float, bool]:
    """(K_sub: the product of ``spectral_norm`` over the layers below the last, whether every one was exact)."""
    k_sub, exact = 1.0, True
    for layer in layers[:-1]:
        s, ok = spectral_norm(layer, **options)  # type: ignore[arg-type]
        k_sub, exact = k_sub * s, exact and ok
    return k_sub, exact


def last_layer_weight(layers: list[Layer]) -> Tensor:
    m = layers[-1].module
    assert isinstance(m, nn.Linear)
    return m.weight


def margin_constants(k_sub: Tensor | float, weight: Tensor) -> Tensor:
    """K[j, i] = K_sub * ||w_j - w_i|| (zero on the diagonal), the margin y_j - y_i's l2 Lipschitz bound."""
    diff = weight.unsqueeze(1) - weight.unsqueeze(0)
    return k_sub * diff.square().sum(-1).clamp_min(0).sqrt()


def top_and_margins(logits: Tensor, constants: Tensor) -> tuple[Tensor, Tensor]:
    """(predicted class j, per-class margin ratios (y_j - y_i) / K_ji with +inf at i = j).

    The predicted class is masked by index, so a tied runner-up has margin 0.
    """
    top = logits.argmax(dim=1)
    margins = logits.gather(1, top[:, None]) - logits
    return top, margin_ratios(margins, constants[top], top)


def margin_ratios(margins: Tensor, k: Tensor, top: Tensor) -> Tensor:
    """(y_j - y_i) / K_ji per class, +inf at the predicted class j itself (masked by index)."""
    return (margins / k.clamp_min(torch.finfo(k.dtype).tiny)).scatter(1, top[:, None], torch.inf)


def bottom_logit(logits: Tensor, constants: Tensor, eps: float | Tensor) -> Tensor:
    """GloRo's y_bot = max_{i != j} (y_i + eps * K_ji), j the predicted class (masked by index)."""
    top = logits.argmax(dim=1)
    shifted = logits + eps * constants[top]
    return shifted.scatter(1, top[:, None], -torch.inf).max(dim=1).values


def lipschitz_radii(logits: Tensor, constants: Tensor) -> tuple[Tensor, Tensor]:
    """(predictions, l2 radii float64 with NaN where the margin is not strictly positive)."""
    top, ratio = top_and_margins(logits.double(), constants.double())
    radius = ratio.min(dim=1).values
    return top, torch.where(radius > 0, radius, torch.full_like(radius, torch.nan))


class LipschitzParams(CertifierParams):
    max_exact_dim: int = Field(
        4096,
        ge=1,
        description="largest layer input size whose matrix is materialised for an exact SVD (larger "
        "convolutions get the guaranteed circulant bound)",
    )
    batch_size: int = Field(1024, ge=1)


@CERTIFIERS.register("lipschitz")
class LipschitzCertifier(Certifier):
    """l2 radii from global Lipschitz margin bounds; works on any chain of supported layers."""

    Params = LipschitzParams
    params: LipschitzParams
    deterministic = True
    needs = frozenset({LIPSCHITZ})

    @classmethod
    def certificates(cls, params: CertifierParams) -> list[tuple[str, str]]:
        return [("lipschitz", "l2")]

    def constants(self, model: nn.Module) -> MarginConstants:
        p = self.params
        layers = layers_of(model, self.context.input_shape, self.needs)
        norms = [spectral_norm(layer, max_exact_dim=p.max_exact_dim) for layer in layers[:-1]]
        k_sub = math.prod(n for n, _ in norms)
        margin = margin_constants(k_sub, last_layer_weight(layers).detach().double())
        return MarginConstants(margin, all(ok for _, ok in norms), [n for n, _ in norms] + [math.inf])

    def certify(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int) -> CertifyResult:
        with eval_mode(model), torch.no_grad():
            constants = self.constants(model)  # once per model: the per-example cost is below
            top, radii = self.radii(model, x, constants)
        k_max = float(constants.margin.max()) if constants.margin.numel() else 0.0
        return CertifyResult(
            [Certificate("lipschitz", "l2", top.cpu(), radii.cpu())],
            {"lipschitz_max_margin_constant": k_max, "lipschitz_exact": float(constants.exact)},
        )

    def radii(self, model: nn.Module, x: Tensor, constants: MarginConstants) -> tuple[Tensor, Tensor]:
        """(predictions with ABSTAIN where uncertified, radii) for the network in its own dtype.

        The prediction is the model's own. The margins come from the float64 network (less
        ``rounding_tolerance``), and the radius r0 they give is shrunk by the deployed network's
        rounding error (``deployment_error``) over the r0-ball: there every layer input z_l satisfies
        ||z_l(x') - z_l(x)||_2 <= K_{<l}·r0 (K_{<l} the product of the norms below layer l), so the
        float32 network keeps the predicted class at every point the smaller radius covers. The error
        is tracked in l2 beside elementwise (the layers' norms), else deep nets certify nothing."""
        b = self.params.batch_size
        dtype = next(model.parameters(), x).dtype
        unit = unit_roundoff(dtype, x.device)
        x = x.to(dtype)  # the model's own dtype (a float64 model, float32 data)
        if not len(x):
            empty = torch.zeros(0, dtype=torch.long, device=x.device)
            return empty, torch.zeros(0, dtype=torch.float64, device=x.device)
        top = torch.cat([model(x[i : i + b]).argmax(1) for i in range(0, len(x), b)])
        radii = []
        with in_float64(model):
            layers = layers_of(model, self.context.input_shape, self.needs)
            for i in range(0, len(x), b):
                radii.append(self._deployed_radii(layers, x[i : i + b].double(), top[i : i + b], constants, unit))
                phases.advance(min(i + b, len(x)), len(x))
        radius = torch.cat(radii)
        return torch.where(torch.isnan(radius), torch.full_like(top, ABSTAIN), top), radius

    @staticmethod
    def _deployed_radii(layers: list[Layer], x: Tensor, top: Tensor, constants: MarginConstants, unit: float) -> Tensor:
        z, seen = x, []
        for layer in layers:
            seen.append(z.abs())
            z = layer.forward(z)
        k = constants.margin.to(z.device)[top]  # (B, m): K_{j i} for the predicted j
        margins = z.gather(1, top[:, None]) - z - rounding_tolerance(z, len(layers)).unsqueeze(1)
        r0 = margin_ratios(margins, k, top).min(1).values.clamp_min(0.0)
        spreads = [k * r0 for k in constants.prefix]  # ||z_l(x') - z_l(x)||_2 over the r0-ball
        error = deployment_error(layers, seen, unit, spreads=spreads, norms=constants.norms)
        deployed = margins - error - error.gather(1, top[:, None])
        radius = margin_ratios(deployed, k, top).min(1).values
        return torch.where(radius > 0, radius, torch.full_like(radius, torch.nan))


@dataclass(frozen=True)
class MarginConstants:
    """A model's margin Lipschitz constants K (m x m), whether every layer norm was exact, and each layer's
    l2 Lipschitz bound (the last layer's: inf, not computed)."""

    margin: Tensor
    exact: bool
    norms: list[float]

    @cached_property
    def prefix(self) -> list[float]:
        """Per layer l, the product of the norms of the layers below it (``prefix[-1]`` is K_sub)."""
        return [math.prod(self.norms[:i]) for i in range(len(self.norms))]

"""The two-layer network of the benign-overfitting theory (Frei et al. 2022; Wang, Zhang & Arora 2024).

f(x) = sum_j a_j phi(<w_j, x>) with the second layer fixed, a_j = +1/sqrt(m) for half the units and
-1/sqrt(m) for the rest, only W trained, W initialised N(0, omega^2) with a tiny omega. phi is the
gamma-leaky, H-smooth ReLU. For certstudy's classifiers the scalar f becomes two logits
(-f/2, f/2): their cross-entropy is exactly the logistic loss log(1 + exp(-y f)) of the papers.

``fan_in_scaling`` stores W as sqrt(d) * W: gradient descent on the stored weights with learning
rate lr follows the same path as gradient descent on W with lr / d, the step size the theory asks
for (lr ~ n / d), so one learning rate serves a sweep over the input dimension d.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from certstudy.models.base import ModelParams
from certstudy.models.registry import MODELS


class SmoothLeakyReLU(nn.Module):
    """phi(u) = u - (1-g)/(4H) for u >= 1/H; g u - (1-g)/(4H) for u <= -1/H; (1-g) H u^2/4 + (1+g) u/2
    between (continuously differentiable, slope between g and 1)."""

    def __init__(self, gamma: float, smoothness: float) -> None:
        super().__init__()
        self.gamma, self.h = gamma, smoothness

    def forward(self, u: Tensor) -> Tensor:
        g, h = self.gamma, self.h
        shift = (1 - g) / (4 * h)
        middle = (1 - g) * h * u * u / 4 + (1 + g) * u / 2
        return torch.where(u >= 1 / h, u - shift, torch.where(u <= -1 / h, g * u - shift, middle))


class ScaledLinear(nn.Module):
    """A bias-free linear layer whose stored weight is ``scale`` times the weight it applies (not an
    ``nn.Linear``, so no certifier mistakes the stored weight for the applied one)."""

    def __init__(self, fan_in: int, fan_out: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_out, fan_in))
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight / self.scale)


class TwoLayerParams(ModelParams):
    width: int = Field(1000, ge=2, le=65536, description="m, hidden units (even: half get +1/sqrt(m))")
    activation: Literal["smooth_leaky_relu", "leaky_relu"] = "smooth_leaky_relu"
    gamma: float = Field(0.1, gt=0, le=1, description="leak: the slope for large negative inputs")
    smoothness: float = Field(1.0, gt=0, description="H: phi' is H-Lipschitz")
    init_scale: float = Field(1e-6, ge=0, description="omega: W starts N(0, omega^2)")
    fan_in_scaling: bool = Field(True, description="gradient steps on W scaled by 1/d (see the module docstring)")


@MODELS.register("two_layer")
class TwoLayer:
    Params = TwoLayerParams

    @staticmethod
    def build(params: TwoLayerParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if num_classes != 2:
            raise ValueError(f"two_layer is a binary classifier (one score f); the dataset has {num_classes} classes")
        d, m = math.prod(input_shape), params.width
        scale = math.sqrt(d) if params.fan_in_scaling else 1.0
        first: nn.Module = ScaledLinear(d, m, scale) if params.fan_in_scaling else nn.Linear(d, m, bias=False)
        with torch.no_grad():
            first.weight.normal_(0.0, params.init_scale * scale)
        phi: nn.Module = (
            SmoothLeakyReLU(params.gamma, params.smoothness)
            if params.activation == "smooth_leaky_relu"
            else nn.LeakyReLU(params.gamma)
        )
        head = nn.Linear(m, 2, bias=False)
        a = torch.ones(m) / math.sqrt(m)
        a[m // 2 :] *= -1
        with torch.no_grad():
            head.weight.copy_(torch.stack([-a / 2, a / 2]))
        head.weight.requires_grad_(False)  # the second layer is fixed
        return nn.Sequential(nn.Flatten(), first, phi, head)

"""A network as the chain of layers the deterministic certifiers reason about.

The Lipschitz bound and the bound-propagation certifiers walk a model layer by layer, so they
accept exactly the layers whose behaviour they know: affine layers (Linear, Conv2d, AvgPool2d,
Flatten) and ReLU, nested ``nn.Sequential`` flattened, Identity and Dropout (a no-op in eval
mode) skipped. Anything else is refused with the layer's name: silently treating an unknown layer
as 1-Lipschitz (as the TensorFlow GloRo does, with a warning) would make certificates unsound.

Adjoints of the affine layers are taken with autograd (a vector-Jacobian product at 0) rather
than hand-written transposes, so strides, padding and output sizes are always right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AFFINE = (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.Flatten)
SKIPPED = (nn.Identity, nn.Dropout)


class UnsupportedLayer(ValueError):
    pass


@dataclass
class Layer:
    """One layer with the shapes (per example) it maps between."""

    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    device: torch.device = torch.device("cpu")  # the model's (parameter-free layers have none of their own)
    dtype: torch.dtype = torch.float32

    @property
    def is_relu(self) -> bool:
        return isinstance(self.module, nn.ReLU)

    def linear(self, z: Tensor) -> Tensor:
        """The layer without its bias (the linear part of an affine layer)."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(z, m.weight)
        if isinstance(m, nn.Conv2d):
            return F.conv2d(z, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
        return m(z)

    def bias(self) -> Tensor | None:
        """The bias broadcast to the output shape (None for bias-free layers)."""
        m = self.module
        b = getattr(m, "bias", None) if isinstance(m, (nn.Linear, nn.Conv2d)) else None
        if b is None:
            return None
        return b if isinstance(m, nn.Linear) else b.view(-1, 1, 1).expand(self.out_shape)

    def affine(self, z: Tensor, scale: float = 1.0) -> Tensor:
        """scale·W z + b in one op (the scale goes on the weights, a far smaller tensor than z)."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(z, m.weight * scale, m.bias)
        if isinstance(m, nn.Conv2d):
            return F.conv2d(z, m.weight * scale, m.bias, m.stride, m.padding, m.dilation, m.groups)
        return m(z) * scale if scale != 1.0 else m(z)

    def abs_linear(self, z: Tensor, scale: float = 1.0) -> Tensor:
        """scale·|W| z (interval radius propagation)."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(z, m.weight.abs() * scale)
        if isinstance(m, nn.Conv2d):
            return F.conv2d(z, m.weight.abs() * scale, None, m.stride, m.padding, m.dilation, m.groups)
        return m(z) * scale if scale != 1.0 else m(z)  # average pooling and flattening have non-negative weights

    def row_norms(self) -> Tensor:
        """The l2 norm of each output's weight row, exactly (border effects of padding included)."""
        m = self.module
        ones = torch.ones((1, *self.in_shape), device=self.device, dtype=self.dtype)
        if isinstance(m, nn.Linear):
            return F.linear(ones, m.weight.square())[0].sqrt()
        if isinstance(m, nn.Conv2d):
            return F.conv2d(ones, m.weight.square(), None, m.stride, m.padding, m.dilation, m.groups)[0].sqrt()
        if isinstance(m, nn.AvgPool2d):  # every weight of a row is 1/area, or 0
            area = math.prod(_pair(m.kernel_size))
            return (m(ones)[0] / area).sqrt()
        return ones[0].flatten() if isinstance(m, nn.Flatten) else ones[0]

    def transpose(self, cotangent: Tensor) -> Tensor:
        """Wᵀ v for each leading row of ``cotangent`` (shape (N, *out_shape)), differentiable in W.

        Dense and convolution layers use their transposed op directly (bound propagation pushes
        thousands of rows through it, and ``adjoint`` would pay a forward pass for each);
        ``output_padding`` comes from the actual shapes, and a test checks it against ``adjoint``.
        """
        m = self.module
        if isinstance(m, nn.Linear):
            return cotangent @ m.weight
        if isinstance(m, nn.Conv2d) and isinstance(m.padding, tuple):
            size = F.conv_transpose2d(cotangent[:1], m.weight, None, m.stride, m.padding, 0, m.groups, m.dilation).shape[2:]
            extra = tuple(want - got for want, got in zip(self.in_shape[1:], size))
            return F.conv_transpose2d(cotangent, m.weight, None, m.stride, m.padding, extra, m.groups, m.dilation)
        if isinstance(m, nn.Flatten):
            return cotangent.reshape(cotangent.shape[0], *self.in_shape)
        return self.adjoint(cotangent)

    def adjoint(self, cotangent: Tensor) -> Tensor:
        """Wᵀ v by autograd (a vector-Jacobian product at 0), differentiable in W: never a hand-written
        transpose, so it is right for any stride, padding and output size."""
        differentiable = torch.is_grad_enabled()
        z = torch.zeros((cotangent.shape[0], *self.in_shape), device=cotangent.device, dtype=cotangent.dtype, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.linear(z), z, cotangent, create_graph=differentiable)
        return grad


def _pair(v: int | tuple[int, ...]) -> tuple[int, ...]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _modules(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in _modules(child)]
    if isinstance(model, SKIPPED):
        return []
    if isinstance(model, AFFINE) or isinstance(model, nn.ReLU):
        return [model]
    raise UnsupportedLayer(f"layer {type(model).__name__} is not supported by the deterministic certifiers (supported: Linear, Conv2d, AvgPool2d, Flatten, ReLU in nn.Sequential)")


def layers_of(model: nn.Module, input_shape: tuple[int, ...]) -> list[Layer]:
    """The model's layers with their shapes; raises ``UnsupportedLayer`` naming an unknown layer."""
    layers = []
    shape = tuple(input_shape)
    param = next(model.parameters(), torch.zeros(()))
    with torch.no_grad():
        for m in _modules(model):
            if isinstance(m, nn.AvgPool2d) and (m.ceil_mode or not m.count_include_pad and _pair(m.padding) != (0, 0) or m.divisor_override):
                raise UnsupportedLayer("AvgPool2d is supported with the default count_include_pad, ceil_mode and divisor")
            out = tuple(m(torch.zeros((1, *shape), device=param.device, dtype=param.dtype)).shape[1:])
            layers.append(Layer(m, shape, out, param.device, param.dtype))
            shape = out
    if any(layer.is_relu and (i == 0 or layers[i - 1].is_relu) for i, layer in enumerate(layers)):
        raise UnsupportedLayer("every ReLU must follow an affine layer (its pre-activation bounds come from that layer)")
    if not layers or layers[-1].is_relu or not isinstance(layers[-1].module, nn.Linear):
        raise UnsupportedLayer("the network must end with a Linear layer (the logits)")
    return layers

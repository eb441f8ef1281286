"""A network as the chain of layers the deterministic certifiers reason about: one class per layer kind.

The Lipschitz bound and the bound-propagation certifiers walk a model layer by layer, so they
accept exactly the modules whose computation they reproduce: a kind is looked up by the module's
**exact** type (a subclass may compute something else), nested plain ``nn.Sequential`` flattened,
``Identity`` and ``Dropout`` (no-ops in eval mode) skipped. Anything else, including a
configuration a kind does not reproduce (non-zero padding modes, ceil-mode pooling, BatchNorm
without running statistics), is refused with the layer's name: silently treating an unknown layer
as 1-Lipschitz (as the TensorFlow GloRo does, with a warning) would make certificates unsound.

Each kind says what it supports, so adding a layer is one class and one ``@layer_kind`` line:

- ``interval``: IBP bounds of its output from bounds of its input (``interval``);
- ``relaxation``: CROWN's linear bounds (``relax`` for activations; affine layers are exact);
- ``lipschitz``: an upper bound on its l2 operator norm (``spectral_norm``);
- ``replay``: the relaxation lines a bound chose can be recorded and replayed at the relaxed optimum
  (the tightness regularizers of CROWN-IBP training; ReLU only).

Affine kinds (Linear, Conv2d, AvgPool2d, Flatten, BatchNorm, Normalize) also give their linear part,
bias and adjoint. Adjoints are taken with autograd (a vector-Jacobian product at 0) where no direct
transposed op is written, so strides, padding and output sizes are always right. Certificates are
computed in the layers' own dtype; the certifiers run them in float32 or wider.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certstudy.models.base import eval_mode
from certstudy.models.layers import MinMax, Normalize

INTERVAL, RELAXATION, LIPSCHITZ, REPLAY = "interval", "relaxation", "lipschitz", "replay"
ALL_OPERATIONS = frozenset({INTERVAL, RELAXATION, LIPSCHITZ, REPLAY})
OPERATION_USE = {
    INTERVAL: "interval bounds (IBP)",
    RELAXATION: "linear relaxations (CROWN)",
    LIPSCHITZ: "Lipschitz bounds",
    REPLAY: "relaxation replay (the tightness regularizers replay ReLU relaxations only)",
}
SKIPPED: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout)

Interval = tuple[Tensor, Tensor]


class UnsupportedLayer(ValueError):
    pass


@dataclass
class Relaxation:
    """The ReLU lines a lower bound chose, per specification: a(z) = slope·z + intercept."""

    layer: int
    slope: Tensor
    intercept: Tensor
    unstable: Tensor


class Layer:
    """One layer with the shapes (per example) it maps between; subclasses are the layer kinds."""

    modules: ClassVar[tuple[type[nn.Module], ...]] = ()
    supports: ClassVar[frozenset[str]] = ALL_OPERATIONS
    """The operations the kind implements; a kind lacking one a certifier needs is refused at validation."""
    elementwise: ClassVar[bool] = False
    """An activation whose pre-activation bounds must come from an affine layer right before it."""

    def __init__(
        self,
        module: nn.Module,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        device: torch.device = torch.device("cpu"),
        dtype: torch.dtype = torch.float32,
        name: str = "",
    ) -> None:
        self.module = module
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.device, self.dtype = device, dtype  # the model's (parameter-free layers have none of their own)
        self.name = name

    @classmethod
    def check(cls, module: nn.Module) -> str | None:
        """Why this module's configuration is not reproduced by the kind (None: it is)."""
        return None

    def forward(self, z: Tensor) -> Tensor:
        """The layer's computation, as the bounds model it."""
        return self.module(z)

    def interval(self, lo: Tensor, hi: Tensor) -> Interval:
        """Bounds of the output over the box [lo, hi] (monotone layers: exact)."""
        return self.module(lo), self.module(hi)

    def spectral_norm(self, **options: float) -> tuple[float, bool]:
        """(an upper bound on the layer's l2 Lipschitz constant, whether it is exact rather than estimated)."""
        return 1.0, True

    def relax(
        self, a: Tensor, lo: Tensor, hi: Tensor, *, upper: bool, index: int = -1, record: bool = False
    ) -> tuple[Tensor, Tensor, Relaxation | None]:
        """CROWN through a non-linear layer: for coefficients ``a`` (N, S, *out_shape) on its output and
        bounds ``lo, hi`` of its relaxation inputs (``relaxation_bounds``; its input for most kinds),
        (coefficients on its input, constant (N, S), the lines chosen) such that
        a·f(z) >= a_in·z + const (<= when ``upper``) for every input z consistent with those bounds."""
        raise UnsupportedLayer(f"layer {self.label} has no linear relaxation")

    def rounding(self, error: Tensor, magnitude: Tensor, unit: float) -> Tensor:
        """A bound on |f̃(z̃) - f(z)| elementwise, where z̃ is the input as computed in a floating-point type
        of unit roundoff ``unit`` (|z̃ - z| <= ``error``, |z| <= ``magnitude``) and f̃ the layer computed in
        that type. Default: an exact operation whose output moves at most as far as the input does in
        each coordinate (ReLU: 1-Lipschitz elementwise, no rounding). With ``unit`` 0 it is the carried
        part alone (how far the exact output moves), which ``carry`` relies on."""
        return error

    def carry(self, error: Tensor, l2: Tensor) -> Tensor:
        """A bound on |f(z̃) - f(z)| elementwise in exact arithmetic, for |z̃ - z| <= ``error`` elementwise
        and ||z̃ - z||_2 <= ``l2`` (B,): ``rounding`` without rounding. Affine layers also use ``l2``."""
        return self.rounding(error, error, 0.0)

    def own_rounding(self, magnitude: Tensor, unit: float, spread: Tensor | None = None) -> Tensor:
        """A bound on |f̃(z) - f(z)| elementwise, the rounding of this layer alone on an exactly given input
        z with |z| <= ``magnitude`` + d, d any vector of l2 norm at most ``spread`` (B,; None: 0).
        Default: each coordinate of d is at most ``spread``."""
        if spread is not None:
            magnitude = magnitude + _per_example(spread, magnitude)
        return self.rounding(torch.zeros_like(magnitude), magnitude, unit)

    relaxes_inputs: ClassVar[bool] = True
    """Its relaxation reads bounds of its inputs themselves (else of linear forms of them, e.g. MinMax's
    pair differences), so tightening those bounds tightens its input interval too."""

    def relaxation_bounds(
        self, lo: Tensor, hi: Tensor, before: Layer | None = None, before_in: Interval | None = None
    ) -> Interval:
        """Bounds of what ``relax`` reads, from the input interval ``lo, hi`` and, where a kind can use
        them, the affine layer ``before`` it and that layer's input interval."""
        return lo, hi

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Per example, which relaxation inputs (bounded by ``lo, hi``) a tighter bound could still help:
        the others already get an exact relaxation. Default: all of them."""
        return torch.ones_like(lo, dtype=torch.bool)

    def relaxation_rows(self, index: Tensor, valid: Tensor) -> Tensor:
        """For flat indices ``index`` (b, s) of relaxation inputs (``valid`` False: padding, a zero row), the
        specification rows (b, s, *in_shape) on the layer's input whose values are those inputs."""
        rows = torch.zeros((*index.shape, math.prod(self.in_shape)), device=index.device, dtype=self.dtype)
        rows.scatter_(2, index.unsqueeze(-1), valid.unsqueeze(-1).to(rows.dtype))
        return rows.view(*index.shape, *self.in_shape)

    @property
    def label(self) -> str:
        return f"'{self.name}' ({type(self.module).__name__})" if self.name else type(self.module).__name__


class AffineLayer(Layer):
    """W z + b. Subclasses give the linear part; the rest follows from it."""

    power_iterated: ClassVar[bool] = True
    """Its norm is estimated by a persistent power iterate during GloRo training."""

    def linear(self, z: Tensor) -> Tensor:
        """The layer without its bias (the linear part)."""
        raise NotImplementedError

    def bias(self) -> Tensor | None:
        """The bias broadcast to the output shape (None for bias-free layers)."""
        return None

    def forward(self, z: Tensor) -> Tensor:
        return self.affine_map(z)

    def affine_map(self, z: Tensor, scale: float = 1.0) -> Tensor:
        """scale·W z + b."""
        out = self.linear(z) * scale if scale != 1.0 else self.linear(z)
        b = self.bias()
        return out if b is None else out + b

    def abs_linear(self, z: Tensor, scale: float = 1.0) -> Tensor:
        """scale·|W| z (interval radius propagation)."""
        raise NotImplementedError

    def terms(self) -> int:
        """The most products one output sums (its bias add included), for the rounding bound."""
        raise NotImplementedError

    def rounding(self, error: Tensor, magnitude: Tensor, unit: float) -> Tensor:
        """|W| e + gamma_n (|W| (m + e) + |b|): the input's error carried through W, plus the rounding of a
        sum of n products in any order (Higham's gamma_n = n u / (1 - n u), FMA or not)."""
        b = self.bias()
        scale = self.abs_linear(magnitude + error)
        if b is not None:
            scale = scale + b.detach().abs()
        return self.abs_linear(error) + gamma(self.terms(), unit) * scale

    def carry(self, error: Tensor, l2: Tensor) -> Tensor:
        """min(|W| e, ||W_k||_2 ||e||_2) per output k (Cauchy-Schwarz on each row)."""
        rows = self.row_norms().unsqueeze(0)
        return torch.minimum(self.abs_linear(error), rows * _per_example(l2, rows))

    def own_rounding(self, magnitude: Tensor, unit: float, spread: Tensor | None = None) -> Tensor:
        """gamma_n (|W| m + ||W_k||_2 spread + |b|): |W| |d| <= ||W_k||_2 ||d||_2 row by row, far below
        the sum over the row of |W| times spread when rows are long."""
        scale = self.abs_linear(magnitude)
        b = self.bias()
        if b is not None:
            scale = scale + b.detach().abs()
        if spread is not None:
            rows = self.row_norms().unsqueeze(0)
            scale = scale + rows * _per_example(spread, rows)
        return gamma(self.terms(), unit) * scale

    def interval(self, lo: Tensor, hi: Tensor) -> Interval:
        centre = self.affine_map(hi + lo, 0.5)  # W mid + b with mid = (hi + lo) / 2
        spread = self.abs_linear(hi - lo, 0.5)
        return centre - spread, centre + spread

    def row_norms(self) -> Tensor:
        """The l2 norm of each output's weight row, exactly (border effects of padding included)."""
        ones = torch.ones((1, *self.in_shape), device=self.device, dtype=self.dtype)
        squared = self.abs_linear_squared(ones)
        return squared[0].sqrt()

    def abs_linear_squared(self, z: Tensor) -> Tensor:
        """(W ∘ W) z, for ``row_norms``."""
        raise NotImplementedError

    def transpose(self, cotangent: Tensor) -> Tensor:
        """Wᵀ v for each leading row of ``cotangent`` (shape (N, *out_shape)), differentiable in W."""
        return self.adjoint(cotangent)

    def transpose32(self, cotangent: Tensor) -> tuple[Tensor, int] | None:
        """(Wᵀ v computed in float32, the most terms one of its outputs sums), where the kind offers a faster
        float32 product of exactly its own weights; None elsewhere."""
        return None

    def adjoint(self, cotangent: Tensor) -> Tensor:
        """Wᵀ v by autograd (a vector-Jacobian product at 0), differentiable in W: never a hand-written
        transpose, so it is right for any stride, padding and output size."""
        differentiable = torch.is_grad_enabled()
        z = torch.zeros(
            (cotangent.shape[0], *self.in_shape), device=cotangent.device, dtype=cotangent.dtype, requires_grad=True
        )
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.linear(z), z, cotangent, create_graph=differentiable)
        return grad

    def spectral_norm(self, *, max_exact_dim: float = 4096, **_: float) -> tuple[float, bool]:
        """(an upper bound on ||W||_2, whether it is the exact norm): the SVD of the materialised matrix
        in float64 where its input size is at most ``max_exact_dim``, else the guaranteed bound of the
        layer's convolution form (``conv_form``, ``circulant_norm_bound``). Never a power iterate, which
        approaches the norm from below."""
        n_in = math.prod(self.in_shape)
        with torch.no_grad():
            if n_in <= max_exact_dim:
                wide = self.in_float64()
                basis = torch.eye(n_in, dtype=torch.float64, device=self.device).view(n_in, *self.in_shape)
                matrix = wide.linear(basis).reshape(n_in, -1)  # the transpose of the layer's matrix
                return svd_upper_bound(matrix), True
            form = self.conv_form()
            if form is None:
                raise UnsupportedLayer(
                    f"layer {self.label}: its input ({n_in}) exceeds max_exact_dim and it has no guaranteed norm bound"
                )
            return circulant_norm_bound(form, self.in_shape), False

    def conv_form(self) -> ConvForm | None:
        """The layer as a zero-padded convolution (None when it is not one)."""
        return None

    def difference_interval(self, lo: Tensor, hi: Tensor) -> Interval | None:
        """IBP bounds of the differences of its output channel pairs (2k) - (2k+1) over the input box,
        with the difference folded into the weights (tighter than differencing two intervals); None
        where the kind does not compute it."""
        return None

    def in_float64(self) -> AffineLayer:
        """The same layer with its parameters in float64 (a copy; the model is untouched)."""
        return type(self)(
            copy.deepcopy(self.module).double(), self.in_shape, self.out_shape, self.device, torch.float64, self.name
        )


SVD_ROUNDING = 8 * 2.0**-53
"""Per matrix dimension, the relative error of LAPACK's float64 largest singular value (backward
stable: the computed value is exact for a matrix within a small multiple of n·u·||W|| of W)."""


def svd_upper_bound(matrix: Tensor) -> float:
    """The largest singular value in float64, raised by a rounding allowance that covers LAPACK's error."""
    m = matrix.detach().double()
    sigma = float(torch.linalg.matrix_norm(m, 2)) if m.numel() else 0.0
    return sigma * (1 + SVD_ROUNDING * max(m.shape, default=1))


@dataclass(frozen=True)
class ConvForm:
    """A linear layer written as a dense 2-d convolution: weight (C_out, C_in, kh, kw), stride, zero padding."""

    weight: Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]


CIRCULANT_SIZES = 4
"""How many circulant sizes N (the smallest valid one and the next ones) ``circulant_norm_bound`` tries:
each is a guaranteed bound, so their minimum is too."""


def circulant_norm_bound(form: ConvForm, in_shape: tuple[int, ...]) -> float:
    """A guaranteed upper bound on the l2 operator norm of a zero-padded, strided 2-d convolution.

    Zero padding embeds the input isometrically in the padded image, on which the layer is a 'valid'
    strided convolution. The polyphase rewrite (Vaidyanathan 1993) turns that exactly into a stride-1
    valid convolution over s_h·s_w times as many channels of an image s_h·s_w times smaller (a
    permutation of the input, so the norm is unchanged). A stride-1 valid convolution of an M×M' image
    is a block of rows of the circular convolution of size N×N' for any N >= M, N' >= M' (no output
    wraps around), so its norm is at most the circular one's, which is exactly the largest singular
    value of the kernel's 2-d DFT matrices K̂(u, v) (Sedghi, Gupta & Long, ICLR 2019). Computed in
    float64 over a few sizes N, the smallest taken, raised by the SVD rounding allowance. On MNIST
    GloRo nets it is within a few per mille of the exact norm (tests and bench/certify_cost.py).
    """
    w = form.weight.detach().double()
    c_out, c_in, kh, kw = w.shape
    (sh, sw), (ph, pw) = form.stride, form.padding
    height, width = in_shape[1] + 2 * ph, in_shape[2] + 2 * pw
    kh2, kw2 = -(-kh // sh), -(-kw // sw)
    poly = F.pad(w, (0, kw2 * sw - kw, 0, kh2 * sh - kh))  # kernel extended to a multiple of the stride
    # w[o, c, sh·a + i, sw·b + j] -> phase (i, j) of channel c, tap (a, b)
    poly = poly.view(c_out, c_in, kh2, sh, kw2, sw).permute(0, 1, 3, 5, 2, 4).reshape(c_out, c_in * sh * sw, kh2, kw2)
    m_h, m_w = -(-height // sh), -(-width // sw)
    best = math.inf
    for extra in range(CIRCULANT_SIZES):
        n_h, n_w = max(m_h, kh2) + extra, max(m_w, kw2) + extra
        spectrum = torch.fft.fft2(poly, s=(n_h, n_w)).permute(2, 3, 0, 1)  # (N, N', C_out, C_in')
        if spectrum.shape[-1] < spectrum.shape[-2]:
            spectrum = spectrum.transpose(-1, -2)
        gram = spectrum @ spectrum.conj().transpose(-1, -2)  # the smaller Gram matrix: same top eigenvalue
        best = min(best, float(torch.linalg.eigvalsh(gram)[..., -1].max()))
    return math.sqrt(max(best, 0.0) * (1 + GRAM_ROUNDING * max(c_out, c_in * sh * sw) ** 2))


GRAM_ROUNDING = 16 * 2.0**-53
"""Per squared matrix dimension, the relative error of the largest eigenvalue of a Gram matrix formed
and diagonalised in float64 (the product's rounding is at most n·u·|K||K|ᴴ, whose norm is at most n
times ||K||², and the symmetric eigensolver is backward stable)."""


_KINDS: dict[type[nn.Module], type[Layer]] = {}


def layer_kind(cls: type[Layer]) -> type[Layer]:
    """Registers a kind for the exact module types it lists."""
    for module_type in cls.modules:
        if module_type in _KINDS:
            raise ValueError(f"layer kind for {module_type.__name__} is registered twice")
        _KINDS[module_type] = cls
    return cls


@layer_kind
class LinearLayer(AffineLayer):
    modules = (nn.Linear,)
    module: nn.Linear

    def linear(self, z: Tensor) -> Tensor:
        return F.linear(z, self.module.weight)

    def bias(self) -> Tensor | None:
        return self.module.bias

    def affine_map(self, z: Tensor, scale: float = 1.0) -> Tensor:
        return F.linear(
            z, self.module.weight * scale, self.module.bias
        )  # the scale goes on the weights, a far smaller tensor

    def abs_linear(self, z: Tensor, scale: float = 1.0) -> Tensor:
        return F.linear(z, self.module.weight.abs() * scale)

    def abs_linear_squared(self, z: Tensor) -> Tensor:
        return F.linear(z, self.module.weight.square())

    def transpose(self, cotangent: Tensor) -> Tensor:
        return cotangent @ self.module.weight

    def spectral_norm(self, **options: float) -> tuple[float, bool]:
        return svd_upper_bound(self.module.weight), True

    def terms(self) -> int:
        return self.module.in_features + 1

    def difference_interval(self, lo: Tensor, hi: Tensor) -> Interval | None:
        w, b = self.module.weight, self.module.bias
        wd = w[0::2] - w[1::2]
        centre = F.linear((hi + lo) / 2, wd, None if b is None else b[0::2] - b[1::2])
        spread = F.linear((hi - lo) / 2, wd.abs())
        return centre - spread, centre + spread


@layer_kind
class ConvLayer(AffineLayer):
    modules = (nn.Conv2d,)
    module: nn.Conv2d

    @classmethod
    def check(cls, module: nn.Module) -> str | None:
        assert isinstance(module, nn.Conv2d)
        if module.padding_mode != "zeros":
            return f"padding_mode {module.padding_mode!r} is not bounded (only zero padding is)"
        return None

    def _conv(self, z: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        m = self.module
        return F.conv2d(z, weight, bias, m.stride, m.padding, m.dilation, m.groups)

    def linear(self, z: Tensor) -> Tensor:
        return self._conv(z, self.module.weight, None)

    def bias(self) -> Tensor | None:
        b = self.module.bias
        return None if b is None else b.view(-1, 1, 1).expand(self.out_shape)

    def affine_map(self, z: Tensor, scale: float = 1.0) -> Tensor:
        return self._conv(z, self.module.weight * scale, self.module.bias)

    def abs_linear(self, z: Tensor, scale: float = 1.0) -> Tensor:
        return self._conv(z, self.module.weight.abs() * scale, None)

    def abs_linear_squared(self, z: Tensor) -> Tensor:
        return self._conv(z, self.module.weight.square(), None)

    def difference_interval(self, lo: Tensor, hi: Tensor) -> Interval | None:
        m = self.module
        if m.groups != 1:
            return None
        wd = m.weight[0::2] - m.weight[1::2]
        bd = None if m.bias is None else m.bias[0::2] - m.bias[1::2]
        centre = self._conv((hi + lo) / 2, wd, bd)
        spread = self._conv((hi - lo) / 2, wd.abs(), None)
        return centre - spread, centre + spread

    def conv_form(self) -> ConvForm | None:
        m = self.module
        if not isinstance(m.padding, tuple):
            return None
        w = m.weight
        dh, dw = _pair(m.dilation)
        if (dh, dw) != (1, 1):  # the dilated kernel, zeros between its taps
            kh, kw = w.shape[2:]
            dilated = w.new_zeros((*w.shape[:2], dh * (kh - 1) + 1, dw * (kw - 1) + 1))
            dilated[:, :, ::dh, ::dw] = w
            w = dilated
        if m.groups > 1:  # block-diagonal over groups: the same operator as a dense kernel with zero blocks
            per_in, per_out = m.in_channels // m.groups, m.out_channels // m.groups
            dense = w.new_zeros((m.out_channels, m.in_channels, *w.shape[2:]))
            for g in range(m.groups):
                dense[g * per_out : (g + 1) * per_out, g * per_in : (g + 1) * per_in] = w[
                    g * per_out : (g + 1) * per_out
                ]
            w = dense
        return ConvForm(w, _pair(m.stride), _pair(m.padding))

    def terms(self) -> int:
        m = self.module
        return (m.in_channels // m.groups) * math.prod(_pair(m.kernel_size)) + 1

    def transpose32(self, cotangent: Tensor) -> tuple[Tensor, int] | None:
        """Wᵀ v computed in float32 (PyTorch's float64 transposed convolution on the CPU runs a slow loop per
        row, 4-9x slower than oneDNN's float32 one), with the most terms any output sums; None where the
        weights are not exactly float32 values (then the float32 product would be another matrix's)."""
        m = self.module
        if not isinstance(m.padding, tuple) or cotangent.device.type != "cpu":
            return None
        weight = m.weight.detach()
        cached = weight.float()  # a kernel: converting and checking it costs nothing next to the product
        if not torch.equal(cached.to(weight.dtype), weight):
            return None
        size = F.conv_transpose2d(cotangent[:1].float(), cached, None, m.stride, m.padding, 0, m.groups, m.dilation)
        extra = tuple(want - got for want, got in zip(self.in_shape[1:], size.shape[2:]))
        out = F.conv_transpose2d(cotangent.float(), cached, None, m.stride, m.padding, extra, m.groups, m.dilation)
        kh, kw = _pair(m.kernel_size)
        return out, (m.out_channels // m.groups) * kh * kw

    def transpose(self, cotangent: Tensor) -> Tensor:
        """The transposed convolution directly (bound propagation pushes thousands of rows through it, and
        ``adjoint`` would pay a forward pass for each); ``output_padding`` comes from the actual shapes,
        and a test checks it against ``adjoint``."""
        m = self.module
        if not isinstance(m.padding, tuple):  # padding="same" / "valid": let autograd work it out
            return self.adjoint(cotangent)
        size = F.conv_transpose2d(cotangent[:1], m.weight, None, m.stride, m.padding, 0, m.groups, m.dilation).shape[2:]
        extra = tuple(want - got for want, got in zip(self.in_shape[1:], size))
        return F.conv_transpose2d(cotangent, m.weight, None, m.stride, m.padding, extra, m.groups, m.dilation)


def _pair(v: int | tuple[int, ...]) -> tuple[int, ...]:
    return (v, v) if isinstance(v, int) else tuple(v)


@layer_kind
class AvgPoolLayer(AffineLayer):
    modules = (nn.AvgPool2d,)
    module: nn.AvgPool2d

    @classmethod
    def check(cls, module: nn.Module) -> str | None:
        assert isinstance(module, nn.AvgPool2d)
        if (
            module.ceil_mode
            or (not module.count_include_pad and _pair(module.padding) != (0, 0))
            or module.divisor_override
        ):
            return "AvgPool2d is supported with the default count_include_pad, ceil_mode and divisor"
        return None

    def linear(self, z: Tensor) -> Tensor:
        return self.module(z)

    def abs_linear(self, z: Tensor, scale: float = 1.0) -> Tensor:
        return self.module(z) * scale if scale != 1.0 else self.module(z)  # its weights are non-negative

    def abs_linear_squared(self, z: Tensor) -> Tensor:
        return self.module(z) / math.prod(_pair(self.module.kernel_size))  # every weight of a row is 1/area, or 0

    def terms(self) -> int:
        return math.prod(_pair(self.module.kernel_size)) + 1  # the window's sum, then the division

    def conv_form(self) -> ConvForm | None:
        kernel = _pair(self.module.kernel_size)
        channels = self.in_shape[0]
        eye = torch.eye(channels, dtype=torch.float64, device=self.device)
        weight = eye.view(channels, channels, 1, 1).expand(-1, -1, *kernel) / math.prod(kernel)
        return ConvForm(weight, _pair(self.module.stride or kernel), _pair(self.module.padding))


@layer_kind
class FlattenLayer(AffineLayer):
    modules = (nn.Flatten,)
    power_iterated = False

    @classmethod
    def check(cls, module: nn.Module) -> str | None:
        assert isinstance(module, nn.Flatten)
        if module.start_dim != 1 or module.end_dim != -1:
            return "only Flatten(start_dim=1, end_dim=-1) is supported"
        return None

    def linear(self, z: Tensor) -> Tensor:
        return z.flatten(1)

    def abs_linear(self, z: Tensor, scale: float = 1.0) -> Tensor:
        return z.flatten(1) * scale if scale != 1.0 else z.flatten(1)

    def abs_linear_squared(self, z: Tensor) -> Tensor:
        return z.flatten(1)

    def interval(self, lo: Tensor, hi: Tensor) -> Interval:
        return lo.flatten(1), hi.flatten(1)

    def transpose(self, cotangent: Tensor) -> Tensor:
        return cotangent.reshape(cotangent.shape[0], *self.in_shape)

    def spectral_norm(self, **options: float) -> tuple[float, bool]:
        return 1.0, True

    def rounding(self, error: Tensor, magnitude: Tensor, unit: float) -> Tensor:
        return error.flatten(1)  # a reshape: exact

    carry = Layer.carry
    own_rounding = Layer.own_rounding


class ChannelAffineLayer(AffineLayer):
    """z ↦ s_c·z + t_c per channel c (a diagonal map): its norm is max |s| exactly."""

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """(s, t), one value per channel."""
        raise NotImplementedError

    def _per_channel(self, t: Tensor) -> Tensor:
        return t.view(-1, *([1] * (len(self.in_shape) - 1)))

    def linear(self, z: Tensor) -> Tensor:
        return z * self._per_channel(self.scale_shift()[0])

    def bias(self) -> Tensor | None:
        return self._per_channel(self.scale_shift()[1]).expand(self.out_shape)

    def affine_map(self, z: Tensor, scale: float = 1.0) -> Tensor:
        s, t = self.scale_shift()
        return z * self._per_channel(s * scale) + self._per_channel(t)

    def abs_linear(self, z: Tensor, scale: float = 1.0) -> Tensor:
        return z * self._per_channel(self.scale_shift()[0].abs() * scale)

    def abs_linear_squared(self, z: Tensor) -> Tensor:
        return z * self._per_channel(self.scale_shift()[0].square())

    def transpose(self, cotangent: Tensor) -> Tensor:
        return self.linear(cotangent)  # a diagonal map is its own transpose

    def spectral_norm(self, **options: float) -> tuple[float, bool]:
        s = self.scale_shift()[0].detach().double()
        return (float(s.abs().max()) if s.numel() else 0.0), True

    def centre(self) -> Tensor:
        """The per-channel value subtracted before scaling (the mean)."""
        raise NotImplementedError

    def rounding(self, error: Tensor, magnitude: Tensor, unit: float) -> Tensor:
        """|s| e + gamma_5 (|s| (m + e + |mean|) + |t|): the few roundings of a subtraction, a square root,
        a division or product, and an add, each relative to a value bounded by that expression."""
        s, t = (v.detach().abs() for v in self.scale_shift())
        mean = self.centre().detach().abs()
        spread = self._per_channel(s) * (magnitude + error + self._per_channel(mean)) + self._per_channel(t)
        return self._per_channel(s) * error + gamma(5, unit) * spread

    carry = Layer.carry  # a diagonal map: |s| e elementwise, nothing tighter from the l2 norm
    own_rounding = Layer.own_rounding


@layer_kind
class NormalizeLayer(ChannelAffineLayer):
    modules = (Normalize,)
    module: Normalize

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        m = self.module
        return 1 / m.std, -m.mean / m.std

    def centre(self) -> Tensor:
        return self.module.mean.reshape(-1)


BATCH_STATS = "_certstudy_batch_stats"


def _record_batch_stats(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
    """Forward hook: a training-mode BatchNorm keeps the statistics it normalised its batch with."""
    if module.training:
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        setattr(module, BATCH_STATS, (x.mean(dims), x.var(dims, unbiased=False)))


@layer_kind
class BatchNormLayer(ChannelAffineLayer):
    """BatchNorm as the affine map it is for fixed statistics.

    In eval mode those are the running statistics, so the certificates bound exactly the network
    that is evaluated. In training mode (CROWN-IBP / IBP training) they are the **clean batch's**
    mean and biased variance, recorded by a forward hook when the method's clean forward pass
    normalises the batch, as Shi et al. (2021) and auto_LiRPA do: the bounds then describe the
    network the training loss sees for that batch, and the perturbed inputs never alter the
    statistics (normalising each bound by its own perturbed batch would not be one fixed network).
    """

    modules = (nn.BatchNorm1d, nn.BatchNorm2d)
    module: nn.BatchNorm2d

    def __init__(self, module: nn.Module, *args: object, **kwargs: object) -> None:
        super().__init__(module, *args, **kwargs)  # type: ignore[arg-type]
        if not getattr(module, "_certstudy_hooked", False):
            module.register_forward_hook(_record_batch_stats)
            module._certstudy_hooked = True  # type: ignore[assignment]

    @classmethod
    def check(cls, module: nn.Module) -> str | None:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        if not module.track_running_stats or module.running_mean is None:
            return "BatchNorm without running statistics normalises every batch by itself and is not one affine map"
        return None

    def centre(self) -> Tensor:
        m = self.module
        stats = getattr(m, BATCH_STATS, None) if m.training else None
        return (stats[0] if stats is not None else m.running_mean).reshape(-1)

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        m = self.module
        stats = getattr(m, BATCH_STATS, None) if m.training else None
        mean, var = stats if stats is not None else (m.running_mean, m.running_var)
        inv = torch.rsqrt(var + m.eps)
        s = m.weight * inv if m.weight is not None else inv
        t = (m.bias if m.bias is not None else 0.0) - mean * s
        return s, t


def relu_lines(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(lower slope, upper slope, upper intercept, unstable mask) of CROWN's ReLU relaxation: the upper
    line u/(u-l)·(z-l), the adaptive lower line of slope 1 if u > -l else 0 (Zhang et al. 2018)."""
    unstable = (lo < 0) & (hi > 0)
    active = lo >= 0
    denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
    up_slope = torch.where(unstable, hi / denom, active.to(hi.dtype))
    up_intercept = torch.where(unstable, -up_slope * lo, torch.zeros_like(lo))
    low_slope = torch.where(unstable, (hi > -lo).to(hi.dtype), active.to(hi.dtype))
    return low_slope, up_slope, up_intercept, unstable


def _relax_relu(a: Tensor, lo: Tensor, hi: Tensor, upper: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(slope, intercept, unstable) that bound a·relu(z) from below (above when ``upper``), elementwise."""
    low_slope, up_slope, up_intercept, unstable = relu_lines(lo, hi)
    zero = torch.zeros_like(up_intercept)
    pos = a >= 0
    if upper:
        return torch.where(pos, up_slope, low_slope), torch.where(pos, up_intercept, zero), unstable, pos
    return torch.where(pos, low_slope, up_slope), torch.where(pos, zero, up_intercept), unstable, pos


@layer_kind
class ReLULayer(Layer):
    modules = (nn.ReLU,)
    elementwise = True

    def interval(self, lo: Tensor, hi: Tensor) -> Interval:
        return lo.clamp_min(0), hi.clamp_min(0)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (lo < 0) & (hi > 0)

    def relax(
        self, a: Tensor, lo: Tensor, hi: Tensor, *, upper: bool, index: int = -1, record: bool = False
    ) -> tuple[Tensor, Tensor, Relaxation | None]:
        slope, intercept, unstable, _ = _relax_relu(a, lo.unsqueeze(1), hi.unsqueeze(1), upper)
        relaxation = Relaxation(index, slope, intercept, unstable) if record else None
        return a * slope, (a * intercept).flatten(2).sum(-1), relaxation


@layer_kind
class MinMaxLayer(Layer):
    """GroupSort of channel pairs: (a, b) ↦ (min, max). Monotone in each input, so intervals are exact;
    a permutation of each pair, so exactly 1-Lipschitz in l2.

    CROWN: max(a, b) = b + relu(a - b) and min(a, b) = a - relu(a - b), so for coefficients
    (λ_min, λ_max) on the pair, λ_min·min + λ_max·max = λ_min·a + λ_max·b + μ·relu(d) with
    μ = λ_max - λ_min and d = a - b; relu(d) is relaxed by CROWN's ReLU lines over d's own bounds
    (``relaxation_bounds``: joint, not the difference of two intervals; exact when d's sign is fixed).
    """

    modules = (MinMax,)
    supports = ALL_OPERATIONS - {REPLAY}
    elementwise = True
    relaxes_inputs = False

    def relaxation_bounds(
        self, lo: Tensor, hi: Tensor, before: Layer | None = None, before_in: Interval | None = None
    ) -> Interval:
        """Bounds of the pair differences d = a - b: l_a - u_b <= d <= u_a - l_b, intersected with the
        bounds of the affine layer before with the difference folded into its weights (the joint
        bound, as the ReLU rewrite max(a, b) = b + relu(a - b) gets it; tighter by up to 0.023 on l2)."""
        lo_p, hi_p = lo.unflatten(1, (lo.shape[1] // 2, 2)), hi.unflatten(1, (hi.shape[1] // 2, 2))
        d_lo = lo_p.select(2, 0) - hi_p.select(2, 1)
        d_hi = hi_p.select(2, 0) - lo_p.select(2, 1)
        joint = (
            before.difference_interval(*before_in)
            if isinstance(before, AffineLayer) and before_in is not None
            else None
        )
        if joint is not None:
            d_lo, d_hi = torch.maximum(d_lo, joint[0]), torch.minimum(d_hi, joint[1])
        return d_lo, d_hi

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (lo < 0) & (hi > 0)

    def rounding(self, error: Tensor, magnitude: Tensor, unit: float) -> Tensor:
        pairs = error.unflatten(1, (error.shape[1] // 2, 2))
        worst = pairs.amax(2, keepdim=True)  # min and max of a pair move at most as far as its farther input
        return worst.expand_as(pairs).flatten(1, 2)

    def relaxation_rows(self, index: Tensor, valid: Tensor) -> Tensor:
        c = self.in_shape[0]
        rest = math.prod(self.in_shape[1:])
        pair, position = index // rest, index % rest
        first = (2 * pair) * rest + position
        weight = valid.to(self.dtype).unsqueeze(-1)
        rows = torch.zeros((*index.shape, c * rest), device=index.device, dtype=self.dtype)
        rows.scatter_(2, first.unsqueeze(-1), weight)
        rows.scatter_(2, (first + rest).unsqueeze(-1), -weight)
        return rows.view(*index.shape, *self.in_shape)

    def relax(
        self, a: Tensor, lo: Tensor, hi: Tensor, *, upper: bool, index: int = -1, record: bool = False
    ) -> tuple[Tensor, Tensor, Relaxation | None]:
        """``lo, hi`` bound the pair differences d (``relaxation_bounds``)."""
        if record:
            raise UnsupportedLayer(f"layer {self.label}: the tightness regularizers replay ReLU relaxations only")
        pairs = a.unflatten(2, (a.shape[2] // 2, 2))  # (N, S, C/2, 2, ...): [..., 0, ...] min, [..., 1, ...] max
        lam_min, lam_max = pairs.select(3, 0), pairs.select(3, 1)
        mu = lam_max - lam_min
        slope, intercept, _, _ = _relax_relu(mu, lo.unsqueeze(1), hi.unsqueeze(1), upper)
        coef_a = lam_min + mu * slope
        coef_b = lam_max - mu * slope
        a_in = torch.stack([coef_a, coef_b], dim=3).flatten(2, 3)
        return a_in, (mu * intercept).flatten(2).sum(-1), None


@layer_kind
class MaxPoolLayer(Layer):
    """Max pooling: monotone, so intervals are exact. Lipschitz in l2 with constant sqrt(n), n the most
    windows any input lies in (1 for non-overlapping windows): the squared change of each window's
    max is at most the largest squared change inside it.

    CROWN (the DeepPoly relaxation, Singh et al. 2019): in each window let i* be the input with the
    largest lower bound. Then max ≥ x_i* always (the lower line), and max ≤ x_i* when l_i* is at
    least every other input's upper bound (the max is then x_i* exactly), else max ≤ max_j u_j (a
    constant upper line). Both lines hold for every point of the box, so the bound is sound.
    """

    modules = (nn.MaxPool2d,)
    supports = ALL_OPERATIONS - {REPLAY}
    module: nn.MaxPool2d

    @classmethod
    def check(cls, module: nn.Module) -> str | None:
        assert isinstance(module, nn.MaxPool2d)
        if module.ceil_mode or module.return_indices or _pair(module.dilation) != (1, 1):
            return "MaxPool2d is supported without ceil_mode, dilation and return_indices"
        return None

    def _geometry(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(kernel, stride, padding), each (height, width)."""
        m = self.module
        return _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)

    def spectral_norm(self, **options: float) -> tuple[float, bool]:
        kernel, stride, _ = self._geometry()
        overlap = math.prod(math.ceil(k / s) for k, s in zip(kernel, stride))
        return math.sqrt(overlap), True

    def _windows(self, t: Tensor) -> Tensor:
        """(B, C, window size, number of windows) views of t's pooling windows, padding as -inf."""
        (kh, kw), (sh, sw), (ph, pw) = self._geometry()
        padded = F.pad(t, (pw, pw, ph, ph), value=-math.inf)
        b, c = t.shape[:2]
        return F.unfold(padded.reshape(b * c, 1, *padded.shape[2:]), (kh, kw), stride=(sh, sw)).view(b, c, kh * kw, -1)

    def lines(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(flat index of x_i* in each input channel, whether x_i* dominates its window, max_j u_j), each (B, C, "
        "windows)."""
        (_, kw), (sh, sw), (ph, pw) = self._geometry()
        lo_w, hi_w = self._windows(lo), self._windows(hi)
        star = lo_w.argmax(2, keepdim=True)
        l_star = lo_w.gather(2, star).squeeze(2)
        others = hi_w.scatter(2, star, -math.inf).amax(2)
        dominated = l_star >= others
        ceiling = hi_w.amax(2)
        out_w = self.out_shape[2]
        window = torch.arange(ceiling.shape[-1], device=lo.device)
        row = (window // out_w) * sh + star.squeeze(2) // kw - ph
        col = (window % out_w) * sw + star.squeeze(2) % kw - pw
        return row * self.in_shape[2] + col, dominated, ceiling

    def rounding(self, error: Tensor, magnitude: Tensor, unit: float) -> Tensor:
        return self.module(error)  # a window's max moves at most as far as its farthest-moving input

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        """The inputs of every window whose maximum is not fixed to one input (the others are exact)."""
        (kh, kw), (sh, sw), (ph, pw) = self._geometry()
        _, dominated, _ = self.lines(lo, hi)
        b, c = lo.shape[:2]
        open_windows = (~dominated).to(lo.dtype).reshape(b * c, 1, -1).expand(-1, kh * kw, -1)
        size = (lo.shape[2] + 2 * ph, lo.shape[3] + 2 * pw)
        touched = F.fold(open_windows, size, (kh, kw), stride=(sh, sw))
        touched = touched[:, :, ph : ph + lo.shape[2], pw : pw + lo.shape[3]]
        return touched.reshape(lo.shape) > 0

    def relax(
        self, a: Tensor, lo: Tensor, hi: Tensor, *, upper: bool, index: int = -1, record: bool = False
    ) -> tuple[Tensor, Tensor, Relaxation | None]:
        if record:
            raise UnsupportedLayer(f"layer {self.label}: the tightness regularizers replay ReLU relaxations only")
        flat_index, dominated, ceiling = self.lines(lo, hi)
        batch = max(a.shape[0], lo.shape[0])
        a = a.expand(batch, *a.shape[1:]).flatten(3)  # (N, S, C, windows)
        dominated, ceiling, flat_index = (t.unsqueeze(1) for t in (dominated, ceiling, flat_index))
        exact_side = (a >= 0) if not upper else (a <= 0)  # the side where the line through x_i* applies
        on_star = exact_side | dominated
        const = torch.where(on_star, torch.zeros_like(a), a * ceiling).flatten(2).sum(-1)
        a_in = torch.zeros(
            (batch, a.shape[1], a.shape[2], math.prod(self.in_shape[1:])), device=a.device, dtype=a.dtype
        )
        a_in = a_in.scatter_add(3, flat_index.expand_as(a), torch.where(on_star, a, torch.zeros_like(a)))
        return a_in.view(batch, a.shape[1], *self.in_shape), const, None


def _walk(module: nn.Module, name: str) -> Iterator[tuple[str, nn.Module]]:
    if type(module) is nn.Sequential:
        for child_name, child in module.named_children():
            yield from _walk(child, f"{name}.{child_name}" if name else child_name)
    elif type(module) not in SKIPPED:
        yield name, module


def kind_of(module: nn.Module, name: str = "", needs: frozenset[str] = frozenset()) -> type[Layer]:
    """The module's layer kind; raises ``UnsupportedLayer`` naming the layer when there is none, its
    configuration is not reproduced, or it lacks an operation in ``needs``."""
    label = (
        f"layer '{name}' ({type(module).__name__})" if name else f"layer {type(module).__name__} (the whole network)"
    )
    kind = _KINDS.get(type(module))
    if kind is None:
        known = ", ".join(sorted({t.__name__ for t in _KINDS}))
        what = (
            "has its own forward (e.g. residual connections), not a chain of layers"
            if next(module.children(), None) is not None
            else "is not supported"
        )
        raise UnsupportedLayer(f"{label} {what}; the deterministic certifiers walk nn.Sequential chains of: {known}")
    reason = kind.check(module)
    if reason:
        raise UnsupportedLayer(f"{label}: {reason}")
    missing = sorted(needs - kind.supports)
    if missing:
        raise UnsupportedLayer(f"{label} has no {OPERATION_USE[missing[0]]} implemented")
    return kind


def _anchor(model: nn.Module) -> Tensor:
    """A tensor of the model's device and dtype (float32 on the CPU for a parameter-free model)."""
    return next(model.parameters(), next(model.buffers(), torch.zeros(())))


def layer_for(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Layer:
    """One module as its layer kind, on its own device and dtype (raises ``UnsupportedLayer`` when it has none)."""
    anchor = _anchor(module)
    return kind_of(module)(module, in_shape, out_shape, anchor.device, anchor.dtype)


def layers_of(model: nn.Module, input_shape: tuple[int, ...], needs: frozenset[str] = frozenset()) -> list[Layer]:
    """The model's layers with their shapes; raises ``UnsupportedLayer`` naming a layer that is unknown
    or lacks an operation in ``needs``. Works on the meta device (no weights needed)."""
    layers: list[Layer] = []
    shape = tuple(input_shape)
    param = _anchor(model)
    for name, m in _walk(model, ""):
        kind = kind_of(m, name, needs)
        with torch.no_grad(), eval_mode(m):  # a training-mode BatchNorm would update its running statistics
            out = tuple(m(torch.zeros((2, *shape), device=param.device, dtype=param.dtype)).shape[1:])
        layers.append(kind(m, shape, out, param.device, param.dtype, name))
        shape = out
    for i, layer in enumerate(layers):
        if layer.elementwise and (i == 0 or not isinstance(layers[i - 1], AffineLayer)):
            raise UnsupportedLayer(
                f"every activation must follow an affine layer (its pre-activation bounds come from that layer); "
                f"{layer.label} does not"
            )
    if not layers or not isinstance(layers[-1], LinearLayer):
        raise UnsupportedLayer("the network must end with a Linear layer (the logits)")
    return layers


def gamma(terms: int, unit: float) -> float:
    """Higham's gamma_n = n·u / (1 - n·u): the relative error bound of a sum of n products in floating point
    of unit roundoff u, in any summation order, with or without fused multiply-adds."""
    return terms * unit / (1 - terms * unit)


def unit_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """The unit roundoff of the arithmetic a model of this dtype runs in on this device: the dtype's, or
    TF32's (10-bit mantissa) for float32 on CUDA while PyTorch allows TF32 matrix products or
    convolutions there."""
    if dtype == torch.float32 and device.type == "cuda":
        if torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32:
            return 2.0**-11
    return torch.finfo(dtype).eps / 2


def _per_example(v: Tensor, like: Tensor) -> Tensor:
    """A per-example value (B,) shaped to broadcast against ``like`` (B or 1, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def deployment_error(
    layers: list[Layer],
    magnitudes: list[Tensor],
    unit: float,
    *,
    spreads: list[Tensor] | None = None,
    norms: list[float] | None = None,
) -> Tensor:
    """A bound on |f̃(x) - f(x)| per logit, f̃ the network computed in floating point of unit roundoff
    ``unit`` and f in exact arithmetic, for every input x whose every layer input z_l satisfies
    |z_l| <= ``magnitudes[l]`` + d_l (B, *layer l's input shape), d_l any vector of l2 norm at most
    ``spreads[l]`` (B,; None: 0). The input itself is exact (a value of the deployed type). Each layer
    adds its own rounding (Higham's error analysis of sums of products, in any order, FMA or not; not
    Winograd or FFT convolutions).

    Elementwise alone, the carried error grows by each layer's largest absolute row sum, which on deep
    wide networks buries every margin (a 4C3F GloRo net: about 30 logits of error at the point
    itself). With ``norms`` (each layer's l2 Lipschitz bound, guaranteed from above; ``inf`` where
    unknown) the error's l2 norm is tracked beside it: ||e_{l+1}|| <= norm_l ||e_l|| + ||own rounding||,
    each coordinate is at most that norm, and an affine row moves at most its l2 norm times it."""
    error = torch.zeros_like(magnitudes[0])
    if norms is None:
        for i, (layer, magnitude) in enumerate(zip(layers, magnitudes)):
            if spreads is not None:
                magnitude = magnitude + _per_example(spreads[i], magnitude)
            error = layer.rounding(error, magnitude, unit)
        return error
    l2 = torch.zeros(error.shape[0], dtype=error.dtype, device=error.device)
    for i, (layer, magnitude) in enumerate(zip(layers, magnitudes)):
        own = layer.own_rounding(magnitude + error, unit, None if spreads is None else spreads[i])
        error = layer.carry(error, l2) + own
        through = norms[i] * l2 if math.isfinite(norms[i]) else torch.full_like(l2, math.inf)  # 0 * inf is NaN
        l2 = torch.minimum(through + own.flatten(1).norm(dim=1), error.flatten(1).norm(dim=1))
        error = torch.minimum(error, _per_example(l2, error))
    return error


def forward(layers: list[Layer], z: Tensor, until: int | None = None) -> Tensor:
    """The network as the layers model it (BatchNorm with the statistics the bounds use), up to layer ``until``."""
    for layer in layers[: None if until is None else until + 1]:
        z = layer.forward(z)
    return z

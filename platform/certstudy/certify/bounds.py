"""Bound propagation (IBP, CROWN, CROWN-IBP) over an l-inf or l2 ball, and the ``ibp`` and ``crown`` certifiers.

Written here because no maintained library fits: auto_LiRPA's registry release (0.3) does not run
on torch 2 and its newer source (github.com/Verified-Intelligence/auto_LiRPA) is not on the registry.
The network is a chain of layer kinds (``certify/network.py``): affine layers (Linear, Conv2d,
AvgPool2d, Flatten, BatchNorm, Normalize) are exact; IBP pushes intervals through ReLU, MinMax and
MaxPool; CROWN relaxes all three (``relax`` of each layer kind).

- **IBP** (Gowal et al. 2018) pushes intervals forward; for an l2 ball the first affine layer uses
  the exact bound c ± eps·||row||, intersected with the per-coordinate interval.
- **CROWN** (Zhang et al. 2018) bounds a linear specification C·f(x) by propagating C backwards
  through linear relaxations of the ReLUs (upper line u/(u-l)·(z-l), adaptive lower line of slope
  1 if u > -l else 0), then minimising the resulting linear function over the input set. Full
  CROWN computes every pre-activation bound the same way (each intersected with IBP's, both
  sound); CROWN-IBP (Zhang et al. 2020) takes the intermediate bounds from IBP.
- The input set is the ball intersected with the data box. For l-inf that is a box; for l2 the
  linear function is minimised over the intersection through its Lagrangian dual (``l2_box_minimum``).

``backward`` also returns the point x* where the linear bound is attained and, per ReLU, the
relaxation line chosen for each specification; ``relaxed_forward`` replays the relaxed network at
x*, which is what the tightness regularizers of ``methods/crown_ibp.py`` measure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from certstudy import phases
from certstudy.certify.base import ABSTAIN, Certificate, Certifier, CertifierParams, CertifyResult
from certstudy.certify.network import (
    INTERVAL,
    RELAXATION,
    AffineLayer,
    FlattenLayer,
    Layer,
    LinearLayer,
    Relaxation,
    UnsupportedLayer,
    deployment_error,
    gamma,
    layers_of,
    unit_roundoff,
)
from certstudy.certify.registry import CERTIFIERS
from certstudy.models.base import eval_mode

Norm = Literal["linf", "l2"]
Box = tuple[float, float] | None
Interval = tuple[Tensor, Tensor]


class OutsideBox(ValueError):
    """A ball's centre lies outside the data box: the ball ∩ box does not contain it, so no bound over
    that set says anything about the point itself."""


def inside_box(x: Tensor, box: Box) -> Tensor:
    """Per example, whether every coordinate of x lies in the data box (always True without a box)."""
    if box is None:
        return torch.ones(len(x), dtype=torch.bool, device=x.device)
    flat = x.flatten(1)
    return ((flat >= box[0]) & (flat <= box[1])).all(1)


@dataclass(frozen=True)
class Ball:
    """{x' : ||x' - x||_norm <= eps} intersected with the data box (per-example eps allowed).

    The centre must lie inside the box (``Ball.of`` refuses it otherwise): a bound over ball ∩ box
    is about the points of that set, and an input outside the box is not one of them (ball ∩ box
    may even be empty). The ``ibp`` and ``crown`` certifiers therefore never certify such a point.
    """

    x: Tensor
    eps: Tensor  # shape (B,)
    norm: Norm
    box: Box = None

    @staticmethod
    def of(x: Tensor, eps: float | Tensor, norm: Norm, box: Box = None) -> Ball:
        """The ball; raises ``OutsideBox`` when a centre has a coordinate outside ``box``."""
        if not bool(inside_box(x, box).all()):
            assert box is not None
            raise OutsideBox(f"a ball's centre lies outside the data box [{box[0]}, {box[1]}]")
        e = (
            torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(len(x))
            if not isinstance(eps, Tensor) or eps.dim() == 0
            else eps.to(x)
        )
        return Ball(x, e, norm, box)

    def _eps(self, like: Tensor) -> Tensor:
        return self.eps.view(-1, *([1] * (like.dim() - 1)))

    def interval(self) -> Interval:
        """Per-coordinate bounds (exact for l-inf, a superset for l2)."""
        e = self._eps(self.x)
        lo, hi = self.x - e, self.x + e
        if self.box is not None:
            lo, hi = lo.clamp_min(self.box[0]), hi.clamp_max(self.box[1])
        return lo, hi

    def minimise(self, a: Tensor, const: Tensor) -> tuple[Tensor, Tensor]:
        """(min over the set of a·x + const, the minimiser x*) for a of shape (B, S, *x.shape[1:])."""
        flat = a.flatten(2)
        x0 = self.x.flatten(1).unsqueeze(1)
        if self.norm == "linf":
            lo, hi = (t.flatten(1).unsqueeze(1) for t in self.interval())
            x_star = torch.where(flat >= 0, lo, hi)
            return (flat * x_star).sum(-1) + const, x_star.view(a.shape)
        e = self.eps.view(-1, 1)
        a_norm = flat.norm(dim=-1)
        value = (flat * x0).sum(-1) - e * a_norm + const
        x_star = x0 - e.unsqueeze(-1) * flat / a_norm.clamp_min(1e-12).unsqueeze(-1)
        if self.box is None:
            return value, x_star.view(a.shape)
        box_value, box_star = l2_box_minimum(flat, x0, e, self.box)
        better = box_value + const > value  # both sound; the dual value can trail the ball's by rounding
        value = torch.where(better, box_value + const, value)
        x_star = torch.where(better.unsqueeze(-1), box_star, x_star)
        return value, x_star.view(a.shape)


L2_BOX_BISECTIONS = 48


def l2_box_minimum(a: Tensor, x0: Tensor, eps: Tensor, box: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """A lower bound on min a·x over {||x - x0||_2 <= eps} ∩ [lo, hi]^d, tight to bisection accuracy,
    and a feasible point near the minimiser; ``a`` is (B, S, d), ``x0`` (B, 1, d), ``eps`` (B, 1).

    The Lagrangian dual: for every lam >= 0, g(lam) = min over the box of a·x + lam/2 (||x - x0||² - eps²)
    is a lower bound (weak duality), attained coordinate-wise at x(lam) = clip(x0 - a/lam, lo, hi).
    ||x(lam) - x0|| falls as lam grows and is <= eps at lam = ||a||/eps, so lam is bisected
    (geometrically) for the smallest lam whose x(lam) lies in the ball. The bound returned is
    max(g(lam), g(0)) and is sound whatever lam the bisection stops at; at the optimum lam it is
    the exact minimum (strong duality: the set has an interior point when x0 is in the box).
    Taking the larger of "ball only" and "box only" instead was looser by 0.94 on average.
    """
    lo, hi = box
    upper_lam = a.norm(dim=-1) / eps.clamp_min(
        torch.finfo(a.dtype).tiny
    )  # feasible: the unclipped step already has norm eps
    lower_lam = upper_lam * 1e-12

    def point(lam: Tensor) -> Tensor:
        return torch.clamp(x0 - a / lam.clamp_min(torch.finfo(lam.dtype).tiny).unsqueeze(-1), lo, hi)

    def dual(lam: Tensor) -> Tensor:
        x = point(lam)
        return (a * x).sum(-1) + lam / 2 * (((x - x0) ** 2).sum(-1) - eps**2)

    for _ in range(L2_BOX_BISECTIONS):
        mid = (lower_lam * upper_lam).sqrt()
        inside = ((point(mid) - x0) ** 2).sum(-1) <= eps**2
        upper_lam = torch.where(inside, mid, upper_lam)
        lower_lam = torch.where(inside, lower_lam, mid)
    box_star = torch.where(a >= 0, torch.full_like(a, lo), torch.full_like(a, hi))
    box_value = (a * box_star).sum(-1)  # g(0): the box alone
    box_inside = ((box_star - x0) ** 2).sum(-1) <= eps**2
    value = torch.where(box_inside, box_value, torch.maximum(dual(upper_lam), box_value))
    x_star = torch.where(box_inside.unsqueeze(-1), box_star, point(upper_lam))
    return value, x_star


def margin_spec(classes: Tensor, num_classes: int) -> Tensor:
    """C with rows e_c - e_i for every i (row c is zero): C·logits are the margins of class c."""
    eye = torch.eye(num_classes, device=classes.device)
    return eye[classes].unsqueeze(1) - eye.unsqueeze(0)


def _is_first_affine(layers: list[Layer], i: int) -> bool:
    return all(isinstance(layers[j], FlattenLayer) for j in range(i))


def _affine_interval(layers: list[Layer], i: int, ball: Ball, lo: Tensor, hi: Tensor) -> Interval:
    """IBP through affine layer i; for an l2 ball the first affine layer (after flattening only) also gets
    the exact bound W x ± eps·||row||, intersected with the interval's."""
    layer = layers[i]
    out_lo, out_hi = layer.interval(lo, hi)
    if ball.norm == "l2" and not isinstance(layer, FlattenLayer) and _is_first_affine(layers, i):
        assert isinstance(layer, AffineLayer)
        exact = layer.forward(ball.x.reshape(len(ball.x), *layer.in_shape))
        r = ball._eps(exact) * layer.row_norms()
        out_lo, out_hi = torch.maximum(out_lo, exact - r), torch.minimum(out_hi, exact + r)
    return out_lo, out_hi


def ibp(layers: list[Layer], ball: Ball, spec: Tensor | None = None) -> tuple[list[Interval], Interval]:
    """(bounds of every layer's output but the last, bounds of spec·logits or of the logits).

    With a spec the last layer is folded into it (C·W), which is tighter than bounding the logits.
    """
    lo, hi = ball.interval()
    outputs: list[Interval] = []
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        if i == last and spec is not None:
            assert isinstance(layer, LinearLayer)
            mid, rad = (hi + lo) / 2, (hi - lo) / 2
            w = torch.matmul(spec, layer.module.weight).expand(len(rad), -1, -1)  # (B, S, hidden)
            centre = torch.matmul(spec, layer.forward(mid).unsqueeze(-1)).squeeze(-1)
            spread = torch.bmm(w.abs(), rad.unsqueeze(-1)).squeeze(-1)
            return outputs, (centre - spread, centre + spread)
        lo, hi = _affine_interval(layers, i, ball, lo, hi) if isinstance(layer, AffineLayer) else layer.interval(lo, hi)
        if i < last:
            outputs.append((lo, hi))
    return outputs, (lo, hi)


@dataclass
class BackwardBound:
    lower: Tensor  # (B, S)
    upper: Tensor | None
    x_star: Tensor | None = None  # (B, S, *input shape): where the lower bound is attained
    relaxations: list[Relaxation] = field(default_factory=list)


UNIT_ROUNDOFF_32 = 2.0**-24


def _product_allowance(layer: AffineLayer, terms: int, m_in: Tensor, m_out: Tensor) -> Tensor:
    """Per output coordinate of the layer, w with |a·(Wz + b) - (Wᵀâ32)·z - a·b| <= |a|·w for every z
    with |z| <= m_in (input) and |Wz + b| <= m_out (output): u m_out + gamma_n (1 + u) |W| m_in
    (``_affine_back``); raised by a relative 1e-12 for its own float64 rounding."""
    u = UNIT_ROUNDOFF_32
    return (u * m_out + gamma(terms, u) * (1 + u) * layer.abs_linear(m_in)) * (1 + 1e-12)


def _affine_back(
    layer: AffineLayer, a: Tensor, const: Tensor, magnitudes: Interval | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(Wᵀ a, const + a·b, a rounding allowance or None).

    With ``magnitudes`` (bounds m_in, m_out on |z| at the layer's input and output, per example) a
    float64 ``a`` may take the layer's float32 product (``transpose32``). The computed Wᵀâ32 differs
    from Wᵀa by the rounding of a to float32 (|a - â32| <= u|a|) and of the product (at most
    gamma_n |W|ᵀ|â32|, n the terms per output, any summation order), so for every z in the bounds
    a·(Wz + b) >= (Wᵀâ32)·z_in + a·b - allowance with allowance = Σ |a| (u m_out + gamma_n (1+u) |W| m_in)
    (the lower bound subtracts it, the upper bound adds it). Valid for a direct or GEMM convolution
    in IEEE float32 (oneDNN's on the CPU; not Winograd or FFT, which the CPU path does not use).
    """
    b = layer.bias()
    if b is not None:
        const = const + (a * b).flatten(2).sum(-1)
    product, terms = _transposed(layer, a, magnitudes is not None)
    if terms is None:
        return product, const, None
    assert magnitudes is not None
    weight = _product_allowance(layer, terms, *magnitudes)
    return product, const, (a.abs() * weight.unsqueeze(1)).flatten(2).sum(-1)


def _transposed(layer: AffineLayer, a: Tensor, float32: bool) -> tuple[Tensor, int | None]:
    """(Wᵀ a for ``a`` of shape (N, S, *out_shape), the terms per output when it was a float32 product)."""
    n, s = a.shape[:2]
    flat = a.reshape(n * s, *layer.out_shape)
    fast = layer.transpose32(flat) if float32 and a.dtype == torch.float64 else None
    if fast is None:
        return layer.transpose(flat).view(n, s, *layer.in_shape), None
    product, terms = fast
    return product.to(a.dtype).view(n, s, *layer.in_shape), terms


def _magnitude(bound: Interval) -> Tensor:
    return torch.maximum(bound[0].abs(), bound[1].abs())


def relaxation_bounds(layers: list[Layer], i: int, pre_bounds: list[Interval], ball: Ball) -> Interval:
    """Bounds of what non-linear layer i's relaxation reads, from the interval bounds ``pre_bounds``
    (``pre_bounds[j]`` bounds layer j's output); layer i - 1 is affine (``layers_of`` checks it)."""
    lo, hi = pre_bounds[i - 1]
    before_in = pre_bounds[i - 2] if i >= 2 else ball.interval()
    return layers[i].relaxation_bounds(lo, hi, layers[i - 1], before_in)


def backward(
    layers: list[Layer],
    end: int,
    spec: Tensor,
    pre_bounds: list[Interval],
    ball: Ball,
    *,
    upper: bool = True,
    record: bool = False,
    relax_bounds: dict[int, Interval] | None = None,
    const: Tensor | None = None,
    float32_products: bool = False,
) -> BackwardBound:
    """CROWN bounds of spec·(output of layer ``end``) + ``const``; ``pre_bounds[i]`` bounds layer i's output.

    ``spec`` has shape (B or 1, S, *out_shape); a leading 1 is broadcast over the batch. Affine
    layers are exact; each non-linear layer i contributes its kind's linear relaxation (``relax``)
    over ``relax_bounds[i]`` where given, else over ``relaxation_bounds`` of ``pre_bounds``.
    ``float32_products``: float64 coefficients may go through a layer's faster float32 product, with
    the rounding allowance of ``_affine_back`` (layers whose output bounds ``pre_bounds`` holds).
    """
    a_lo = spec
    a_up = spec if upper else None
    c_lo = torch.zeros(spec.shape[:2], device=spec.device, dtype=spec.dtype) if const is None else const
    c_up = c_lo
    relaxations: list[Relaxation] = []
    for i in range(end, -1, -1):
        layer = layers[i]
        if isinstance(layer, AffineLayer):
            magnitudes = None
            if float32_products and i < len(pre_bounds):
                below = pre_bounds[i - 1] if i > 0 else ball.interval()
                magnitudes = (_magnitude(below), _magnitude(pre_bounds[i]))
            a_lo, c_lo, slack = _affine_back(layer, a_lo, c_lo, magnitudes)
            if slack is not None:
                c_lo = c_lo - slack
            if a_up is not None:
                a_up, c_up, slack = _affine_back(layer, a_up, c_up, magnitudes)
                if slack is not None:
                    c_up = c_up + slack
            continue
        given = relax_bounds.get(i) if relax_bounds is not None else None
        lo, hi = given if given is not None else relaxation_bounds(layers, i, pre_bounds, ball)
        a_next, c_add, relaxation = layer.relax(a_lo, lo, hi, upper=False, index=i, record=record)
        if relaxation is not None:
            relaxations.append(relaxation)
        a_lo, c_lo = a_next, c_lo + c_add
        if a_up is not None:
            a_up, c_add_up, _ = layer.relax(a_up, lo, hi, upper=True, index=i)
            c_up = c_up + c_add_up
    n = len(ball.x)
    a_lo = a_lo.expand(n, *a_lo.shape[1:])
    lower, x_star = ball.minimise(a_lo, c_lo.expand(n, -1))
    upper_value = None
    if a_up is not None:
        neg, _ = ball.minimise(-a_up.expand(n, *a_up.shape[1:]), -c_up.expand(n, -1))
        upper_value = -neg
    return BackwardBound(lower, upper_value, x_star if record else None, relaxations[::-1])


def relaxed_forward(layers: list[Layer], bound: BackwardBound) -> tuple[Tensor, Tensor]:
    """Replays the relaxed network at x* with the recorded ReLU lines.

    Returns (the output of the last layer per spec, shape (B, S, m), and the per-(example, spec)
    sum over unstable ReLUs of |relaxed activation - ReLU(relaxed pre-activation)|).
    """
    assert bound.x_star is not None
    n, s = bound.x_star.shape[:2]
    z = bound.x_star.reshape(n * s, *bound.x_star.shape[2:])
    lines = {r.layer: r for r in bound.relaxations}
    infeasibility = torch.zeros((n, s), device=z.device, dtype=z.dtype)
    for i, layer in enumerate(layers):
        if isinstance(layer, AffineLayer):
            z = layer.forward(z)
            continue
        if i not in lines:
            raise UnsupportedLayer(f"layer {layer.label}: the tightness regularizers replay ReLU relaxations only")
        r = lines[i]
        pre = z.view(n, s, *layer.in_shape)
        relaxed = r.slope * pre + r.intercept
        infeasibility = infeasibility + ((relaxed - pre.clamp_min(0)).abs() * r.unstable).flatten(2).sum(-1)
        z = relaxed.reshape(n * s, *layer.in_shape)
    return z.view(n, s, -1), infeasibility


CROWN_CHUNK_ELEMENTS = 1 << 21
"""Specification rows of full CROWN's intermediate bounds go through the network in chunks of about
this many coefficients (examples x rows x widest layer), at least ``CROWN_CHUNK_MIN_ROWS`` rows: memory
stays bounded on wide layers, and chunks this size ran fastest on dm_small (0.046-0.053 s per point
at 2^19-2^22 against 0.10 s at 2^24, one thread: the tensors stay in cache)."""
CROWN_CHUNK_MIN_ROWS = 256


def _affine_prefix(
    layers: list[Layer], end: int, spec: Tensor, bounds: list[Interval], ball: Ball
) -> tuple[Tensor, Tensor, Tensor, int]:
    """spec (1, S, ...)·(output of layer ``end``) pushed back through the affine layers from ``end`` down to
    the first non-linear one, shared by every example: (coefficients on that layer's output, constant
    (1, S), per-example rounding allowance (B, S) of the float32 products taken, the layer's index;
    -1 when none is left). ``bounds[j]`` bounds layer j's output per example."""
    const = torch.zeros(spec.shape[:2], device=spec.device, dtype=spec.dtype)
    allowance = torch.zeros((len(ball.x), spec.shape[1]), device=spec.device, dtype=spec.dtype)
    i = end
    while i >= 0 and isinstance(layers[i], AffineLayer):
        below = bounds[i - 1] if i > 0 else ball.interval()
        layer = layers[i]
        assert isinstance(layer, AffineLayer)
        b = layer.bias()
        if b is not None:
            const = const + (spec * b).flatten(2).sum(-1)
        product, terms = _transposed(layer, spec, True)
        if terms is not None:  # per example: |a|·w summed, for every row at once
            weight = _product_allowance(layer, terms, _magnitude(below), _magnitude(bounds[i]))
            allowance = allowance + weight.flatten(1) @ spec[0].abs().flatten(1).T
        spec = product
        i -= 1
    return spec, const, allowance, i


def _chunks(counts: Tensor, rows: int) -> list[Tensor]:
    """Examples grouped, most rows first, so that each group's size times its largest count stays within
    ``rows``: padding to a group's largest count then wastes little."""
    order = torch.argsort(counts, descending=True)
    groups, start = [], 0
    while start < len(order):
        width = max(1, int(counts[order[start]]))
        size = max(1, rows // width)
        groups.append(order[start : start + size])
        start += size
    return groups


def _refine(
    layers: list[Layer], i: int, bounds: list[Interval], relax: dict[int, Interval], ball: Ball, current: Interval
) -> Interval:
    """CROWN bounds of non-linear layer i's relaxation inputs where ``unstable`` (per example), the
    others kept at ``current``.

    The rows of the batch's union of unstable inputs go once through the affine layers below layer i
    (shared by every example); from the first non-linear layer down each example takes only its own
    unstable rows (padded to the largest count of its group), in chunks of ``CROWN_CHUNK_ELEMENTS``.
    Float64 coefficients take float32 convolution products with a rounding allowance
    (``_affine_back``)."""
    layer = layers[i]
    lo, hi = current
    n = len(lo)
    mask = layer.unstable(lo, hi).reshape(n, -1)
    union = mask.any(0).nonzero().squeeze(1)
    if len(union) == 0:
        return current
    widest = max(math.prod(layer.in_shape) for layer in layers[: i + 1])
    rows_per_chunk = max(CROWN_CHUNK_MIN_ROWS, CROWN_CHUNK_ELEMENTS // widest)
    new_lo, new_hi = lo.reshape(n, -1).clone(), hi.reshape(n, -1).clone()
    for start in range(0, len(union), rows_per_chunk):
        rows = union[start : start + rows_per_chunk]
        spec = layer.relaxation_rows(rows.unsqueeze(0), torch.ones((1, len(rows)), dtype=torch.bool, device=lo.device))
        shared, shared_const, allowance, below = _affine_prefix(layers, i - 1, spec.to(lo.dtype), bounds, ball)
        needed = mask[:, rows]  # (n, rows): which example needs which row
        counts = needed.sum(1)
        for group in _chunks(counts, rows_per_chunk):
            width = int(counts[group].max())
            if width == 0:
                continue
            pick = torch.argsort((~needed[group]).to(torch.int8), dim=1, stable=True)[:, :width]  # its rows first
            ok = torch.arange(width, device=lo.device).unsqueeze(0) < counts[group].unsqueeze(1)
            keep = ok.to(lo.dtype)
            a = shared[0][pick] * keep.view(*keep.shape, *([1] * (shared.dim() - 2)))
            c = shared_const[0][pick] * keep
            spread = allowance[group].gather(1, pick) * keep
            sub_ball = Ball(ball.x[group], ball.eps[group], ball.norm, ball.box)
            sub_bounds = [(b_lo[group], b_hi[group]) for b_lo, b_hi in bounds]
            sub_relax = {k: (r_lo[group], r_hi[group]) for k, (r_lo, r_hi) in relax.items()}
            b = backward(layers, below, a, sub_bounds, sub_ball, relax_bounds=sub_relax, const=c, float32_products=True)
            assert b.upper is not None
            index = rows[pick]
            cur_lo, cur_hi = new_lo[group], new_hi[group]
            at_lo, at_hi = cur_lo.gather(1, index), cur_hi.gather(1, index)
            tight_lo = torch.where(ok, torch.maximum(at_lo, b.lower - spread), at_lo)
            tight_hi = torch.where(ok, torch.minimum(at_hi, b.upper + spread), at_hi)
            new_lo[group] = cur_lo.scatter(1, index, tight_lo)
            new_hi[group] = cur_hi.scatter(1, index, tight_hi)
    return new_lo.view(lo.shape), new_hi.view(hi.shape)


def crown_bounds(layers: list[Layer], ball: Ball) -> tuple[list[Interval], dict[int, Interval]]:
    """Full CROWN's intermediate bounds: (every layer's output interval but the last, the bounds each
    non-linear layer's relaxation reads).

    Layer by layer: a reference interval comes from interval propagation of the bounds found so far
    (never looser than IBP's: interval arithmetic is inclusion-monotone), then only the relaxation
    inputs whose reference interval leaves their relaxation inexact (``unstable``: a ReLU with
    l < 0 < u, a MinMax pair whose difference changes sign, a max-pool window without a sure
    winner) get a CROWN backward pass (``_refine``); the others keep their reference bound, which
    gives them an exact relaxation already. auto_LiRPA computes the unstable neurons' bounds only in
    the same way. Each bound is sound, so their intersection is too.
    """
    lo, hi = ball.interval()
    bounds: list[Interval] = []
    relax: dict[int, Interval] = {}
    for i, layer in enumerate(layers[:-1]):
        if not isinstance(layer, AffineLayer):
            current = relaxation_bounds(layers, i, bounds, ball)
            relax[i] = _refine(layers, i, bounds, relax, ball, current)
            if layer.relaxes_inputs:  # its input interval is tightened as well
                bounds[i - 1] = relax[i]
            lo, hi = layer.interval(*bounds[i - 1])
        else:
            lo, hi = _affine_interval(layers, i, ball, lo, hi)
        bounds.append((lo, hi))
    return bounds, relax


def crown(layers: list[Layer], ball: Ball, spec: Tensor) -> Tensor:
    """Full CROWN lower bounds of spec·logits over the intermediate bounds of ``crown_bounds``."""
    bounds, relax = crown_bounds(layers, ball)
    return backward(
        layers, len(layers) - 1, spec, bounds, ball, upper=False, relax_bounds=relax, float32_products=True
    ).lower


def crown_ibp(layers: list[Layer], ball: Ball, spec: Tensor, *, record: bool = False) -> tuple[Tensor, BackwardBound]:
    """(IBP lower bounds of spec·logits, CROWN-IBP's bound: intermediate bounds from IBP)."""
    ibp_bounds, (ibp_lower, _) = ibp(layers, ball, spec)
    return ibp_lower, backward(layers, len(layers) - 1, spec, ibp_bounds, ball, upper=False, record=record)


FUSION_MAX_LOSS = 300.0
"""Above this bound on the loss an example's fused bound is replaced by CE(-lb_IBP) (``fused_cross_entropy_bound``):
the exponentials are evaluated shifted by the largest margin bound, and beyond it they would overflow."""


def fused_cross_entropy_bound(
    layers: list[Layer],
    ball: Ball,
    pre_bounds: list[Interval],
    margins: Interval,
    labels: Tensor,
    centre_logits: Tensor,
) -> Tensor:
    """An upper bound, per example, on the cross-entropy loss over the ball with CROWN's bound taken on
    the loss itself: loss fusion (Xu et al., NeurIPS 2020, "Automatic perturbation analysis for
    scalable certified robustness and beyond"). One backward row per example instead of one per class.

    With q_i = z_i - z_y in [l_i, u_i] (``margins`` bounds z_y - z_i, e.g. IBP's) and s_i = q_i - M,
    M = max_i u_i: CE = M + log sum_i exp(s_i); exp is convex, so exp(s) <= its chord over [l - M, u - M];
    log is concave, so log S <= log t - 1 + S / t for any t > 0 (here the sum's largest value).
    What remains is linear in z, c·z with c = sum_i (k_i / t)(e_i - e_y), bounded above by CROWN over
    ``pre_bounds``. Every step is an upper bound for every point of the ball, so the result bounds the
    worst-case loss from above. The scalar steps run in float64; each example gets the smaller of
    this bound and CE(-l) (both valid), and CE(-l) alone where M exceeds ``FUSION_MAX_LOSS``. It is not
    always below the unfused CE(-lb_CROWN-IBP) (the chord over IBP's margin intervals can be looser
    than CROWN's per-margin bounds); bench/certify_cost.py measures both.
    """
    m = centre_logits.shape[1]
    ibp_ce = torch.nn.functional.cross_entropy(-margins[0], labels, reduction="none")
    q_lo, q_hi = (-margins[1]).double(), (-margins[0]).double()
    shift = q_hi.max(1, keepdim=True).values.detach()
    usable = shift.squeeze(1) <= FUSION_MAX_LOSS
    cap = torch.full_like(shift, FUSION_MAX_LOSS)  # keeps every value finite for the examples not used
    shift = torch.minimum(shift, cap)
    lo, hi = torch.minimum(q_lo, cap) - shift, torch.minimum(q_hi, cap) - shift
    width = hi - lo
    e_lo, e_hi = lo.exp(), hi.exp()
    narrow = width < 1e-3
    w_narrow = torch.where(narrow, width, torch.full_like(width, 1e-3)).clamp_min(1e-300)
    slope = torch.where(  # the chord's slope, without cancellation for narrow intervals, exp(l) when u = l
        narrow, e_lo * torch.expm1(w_narrow) / w_narrow, (e_hi - e_lo) / torch.where(narrow, 1.0, width)
    )
    # the tangent point of log: the largest value the sum can take, in [1, m] after the shift, so 1/t
    # stays bounded (at the clean logits' sum it could be e^-40 for a confident point: a vast bound
    # and gradients that overflow float32)
    log_t = torch.logsumexp(hi, 1, keepdim=True).detach()
    inv_t = torch.exp(-log_t)
    const = shift + log_t - 1 + ((e_lo - slope * lo).sum(1, keepdim=True) - shift * slope.sum(1, keepdim=True)) * inv_t
    coef = slope * inv_t
    onehot = torch.nn.functional.one_hot(labels, m).to(coef.dtype)
    row = (coef - coef.sum(1, keepdim=True) * onehot).to(centre_logits.dtype)  # sum_i coef_i (e_i - e_y)
    upper = -backward(layers, len(layers) - 1, -row.unsqueeze(1), pre_bounds, ball, upper=False).lower
    fused = (const.squeeze(1) + upper.squeeze(1).double()).to(ibp_ce.dtype)
    return torch.where(usable & (fused < ibp_ce), fused, ibp_ce)


def ibp_margins(layers: list[Layer], ball: Ball, classes: Tensor) -> Tensor:
    """IBP lower bounds of y_c - y_i with the last layer folded in, as ``ibp(..., margin_spec)``
    computes them, but from the m² rows |w_c - w_i| in one product instead of a (B, m, hidden) tensor."""
    lo, hi = ibp(layers[:-1], ball)[1]
    last = layers[-1].module
    assert isinstance(last, nn.Linear)
    m = last.out_features
    rows = (last.weight.unsqueeze(1) - last.weight.unsqueeze(0)).abs().reshape(m * m, -1)
    spread = ((hi - lo) / 2) @ rows.T  # (B, m*m): |w_c - w_i|·rad for every pair
    centre = last((hi + lo) / 2)
    own = centre.gather(1, classes[:, None])
    return own - centre - spread.view(-1, m, m).gather(1, classes.view(-1, 1, 1).expand(-1, 1, m)).squeeze(1)


def margin_lower_bounds(bound: str, layers: list[Layer], ball: Ball, classes: Tensor, num_classes: int) -> Tensor:
    """Lower bounds on y_c - y_i over the ball for every i (+inf at i = c): ``ibp``, or ``crown``, the
    elementwise maximum of full CROWN's, CROWN-IBP's and IBP's lower bounds (each sound, none always
    the tightest), so the CROWN certificate is never looser than IBP's."""
    if bound == "ibp":
        lower = ibp_margins(layers, ball, classes)
    else:
        # Every bound is sound, but full CROWN is not always tighter than IBP or CROWN-IBP (intersecting
        # intermediate bounds changes which ReLU lines are chosen): report the elementwise best of the three.
        spec = margin_spec(classes, num_classes).to(ball.x.dtype)
        ibp_lower, crown_ibp_bound = crown_ibp(layers, ball, spec)
        lower = torch.maximum(torch.maximum(ibp_lower, crown_ibp_bound.lower), crown(layers, ball, spec))
    return lower.scatter(1, classes[:, None], torch.inf)


def deployed_logit_error(layers: list[Layer], ball: Ball, unit: float) -> Tensor:
    """Per example and logit, a bound over the ball on how far the network computed in floating point
    of unit roundoff ``unit`` (its deployed dtype) is from the exact network the bounds describe."""
    inputs = [ball.interval(), *ibp(layers, ball)[0]]
    magnitudes = [torch.maximum(lo.abs(), hi.abs()) for lo, hi in inputs]
    return deployment_error(layers, magnitudes, unit)


class BoundParams(CertifierParams):
    norm: Norm = Field("linf", description="the ball's norm; radii are the study's radius grid for it")
    batch_size: int = Field(64, ge=1)


ROUNDING_SLACK = 2.0**-40
"""Relative tolerance on a float64 margin lower bound: 2^13 times float64's unit roundoff per layer."""


def rounding_tolerance(logits: Tensor, depth: int) -> Tensor:
    """Per point, how far above 0 a float64 margin lower bound must be to certify: the bound's own
    rounding error grows with the magnitudes involved (the logits) and with the number of layers
    it went through. Negligible against any margin that matters (1e-10 at logits of 100)."""
    return depth * ROUNDING_SLACK * (1.0 + logits.abs().amax(1))


@contextmanager
def in_float64(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its parameters and buffers in float64 for the block, then back in their own
    dtype. Widening and narrowing back are exact (every float32, bfloat16 and float16 value is a
    float64 value), and the parameters stay the same objects (an optimizer holding them is not
    disturbed); a copy of the model is not always possible (a module holding a non-leaf tensor
    cannot be deep-copied)."""
    dtype = next(model.parameters(), torch.zeros(())).dtype
    model.double()
    try:
        yield model
    finally:
        model.to(dtype)


class BoundCertifier(Certifier):
    """Certified at r when every margin lower bound over the r-ball is positive at the predicted class.

    The bounds are computed in float64 (``in_float64``): in float32 they exceeded the exact
    margin minimum by up to 9e-6 on trained networks with logits of 10-100, enough to certify a
    point that is not robust. A bound must also clear ``rounding_tolerance``. The prediction being
    certified is the model's own, in its own dtype.

    A point's radius is the largest radius of the study's grid it is certified at (grid radii are
    tried in increasing order until one fails), so ``acr_<name>`` is a grid-quantised lower bound.
    """

    Params = BoundParams
    params: BoundParams
    deterministic = True
    bound: str = ""
    """The bound computed, ``ibp`` or ``crown``; also the certificate's name."""

    @classmethod
    def certificates(cls, params: CertifierParams) -> list[tuple[str, str]]:
        assert isinstance(params, BoundParams)
        return [(cls.bound, params.norm)]

    def certify(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int) -> CertifyResult:
        p = self.params
        grid = sorted(r for r in self.context.radii.get(p.norm, []) if r > 0)
        layers_of(model, self.context.input_shape, self.needs)  # refuses an unsupported model first
        dtype = next(model.parameters(), x).dtype
        unit = unit_roundoff(dtype, x.device)
        with eval_mode(model), torch.no_grad():  # the model's own predictions, in its own dtype
            logits = [model(x[i : i + p.batch_size].to(dtype)) for i in range(0, len(x), p.batch_size)]
        preds, radii = [], []
        with in_float64(model), eval_mode(model), torch.no_grad():
            layers = layers_of(model, self.context.input_shape, self.needs)
            for i, batch_logits in zip(range(0, len(x), p.batch_size), logits):
                x64 = x[i : i + p.batch_size].double()
                top = batch_logits.argmax(1)
                margins = (batch_logits.gather(1, top[:, None]) - batch_logits).scatter(1, top[:, None], torch.inf)
                tolerance = rounding_tolerance(model(x64), len(layers))
                inside = inside_box(x64, self.context.bounds)  # the rule of ``Ball``: outside the box, uncertified
                radius = torch.where((margins.min(1).values > 0) & inside, 0.0, torch.nan).double()
                alive = ~torch.isnan(radius)
                for r in grid:
                    if not alive.any():
                        break
                    idx = alive.nonzero().squeeze(1)
                    ball = Ball.of(x64[idx], r, p.norm, self.context.bounds)
                    lower = margin_lower_bounds(self.bound, layers, ball, top[idx], self.context.num_classes)
                    error = deployed_logit_error(layers, ball, unit)
                    deployed = lower - error - error.gather(1, top[idx, None])
                    ok = deployed.min(1).values > tolerance[idx]
                    radius[idx[ok]] = r
                    alive[idx[~ok]] = False
                preds.append(torch.where(torch.isnan(radius), ABSTAIN, top).cpu())
                radii.append(radius.cpu())
                phases.advance(min(i + p.batch_size, len(x)), len(x))
        empty = torch.zeros(0)
        return CertifyResult(
            [
                Certificate(
                    self.bound,
                    p.norm,
                    torch.cat(preds) if preds else empty.long(),
                    torch.cat(radii) if radii else empty.double(),
                )
            ]
        )


@CERTIFIERS.register("ibp")
class IBPCertifier(BoundCertifier):
    bound = "ibp"
    needs = frozenset({INTERVAL})


@CERTIFIERS.register("crown")
class CROWNCertifier(BoundCertifier):
    bound = "crown"
    needs = frozenset({INTERVAL, RELAXATION})

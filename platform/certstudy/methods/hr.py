"""Holistic Robust (HR) training: Bennouna, Lucas & Van Parys, ICML 2023 (arXiv 2303.02251).

HR minimises the worst-case expected loss over the ambiguity set (HD, the paper's default)

    U = { P : exists Q with LP_N(P_hat, Q) <= alpha and KL(Q || P) <= r },

where LP_N lets every point move freely inside the evasion ball N = {||delta|| <= eps} and any
fraction ``alpha`` of mass move anywhere (poisoning). Per batch this becomes: adversarial losses
l_i = max_{||delta|| <= eps} loss(x_i + delta, y_i) by PGD, then a weighted sum sum_i p_i l_i with
the worst-case weights p held constant (Danskin), so the gradient is sum_i p_i grad l_i.

Guarantee (paper, Thm. 3.3, as used here): with probability 1 - exp(-r n + O(1)) over the sample,
the out-of-sample loss under evasion within eps and poisoning of an alpha fraction is at most the
HR objective on the n training points. ``final_metrics`` reports that objective on the whole train
split next to the adversarial test loss at the same eps, so every trial shows whether the bound
held on its test split.

The weights come from an exact closed form (the dual of the KL-ball problem in Bennouna et al.,
ICML 2023, "Certified Robust Neural Networks: Generalization and Corruption Resistance") instead of the
reference library's per-batch conic program (cvxpy + ECOS/MOSEK/SCS): trimming the lowest-loss
alpha mass onto the worst point is a sort, and the KL step is a one-dimensional root in the dual
variable u, found here by vectorised grid refinement on the losses' device with a fixed number of
operations, so training never waits on a solver (one host sync per batch: the finiteness check).
No substitutions: alpha = 0 and r = 0 are computed exactly (the library silently uses 1e-6 and 1e-3).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from certstudy.data.base import Splits
from certstudy.errors import TrialFailed
from certstudy.methods.adversarial import PGDParams, pgd_points, pgd_threat_model
from certstudy.methods.base import Method, MethodParams
from certstudy.methods.registry import METHODS
from certstudy.metric_names import TAG_PREFIX
from certstudy.models.base import eval_mode

_GRID = 64  # points per refinement round
_ROUNDS = 3  # 100 / 64**3 ~ 4e-4 in log u; the final interpolation's error is ~ its square
_SPAN = 50.0  # the root is searched in log u within +-SPAN of log(max gap)
ROUNDING_SLACK = 1e-12  # relative: covers float64 rounding of the dual's sums (~n * 1e-16), so the bound stays above


def trimmed_masses(losses: Tensor, alpha: float) -> Tensor:
    """Masses of the N samples after moving the lowest-loss ``alpha`` mass to the worst point.

    Every sample starts at 1/N; mass is removed from the lowest losses first (a sample may be
    trimmed partly when alpha * N is not an integer). The removed mass, min(alpha, 1), is the
    extra atom's, which sits at the largest loss.
    """
    n = losses.numel()
    budget = min(max(float(alpha), 0.0), 1.0)
    order = torch.argsort(losses, stable=True)
    before = torch.arange(n, device=losses.device, dtype=torch.float64) / n
    removed = (budget - before).clamp(0.0, 1.0 / n)
    q = torch.empty(n, device=losses.device, dtype=torch.float64)
    q[order] = 1.0 / n - removed
    return q


def _kl(log_u: Tensor, q: Tensor, gap: Tensor) -> Tensor:
    """KL(q || p(u)) for p_j(u) proportional to q_j / (u + gap_j), at every u = exp(log_u).

    With d = u + gap, A = sum_k q_k / d_k and B = sum_k q_k gap_k / d_k, q_j / p_j = d_j A =
    s - B + gap_j A exactly (s = sum q), so KL = sum_j q_j log1p(s - 1 + gap_j A - B): the small
    ratio log is formed without cancellation. The textbook form log(A) + sum_j q_j log d_j cancels
    two terms of size log u, which loses every digit of KL when r (hence KL at the root) is below
    about 1e-7 and u is near 1/sqrt(r)."""
    d = log_u.exp().unsqueeze(-1) + gap
    inv = d.reciprocal()
    a = inv @ q
    b = (inv * gap) @ q
    excess = q.sum() - 1.0
    return torch.log1p(excess + gap * a.unsqueeze(-1) - b.unsqueeze(-1)) @ q


def _kl_root(q: Tensor, gap: Tensor, r: float) -> Tensor:
    """log u with KL(q || p(u)) = r, for gaps already scaled to at most 1.

    KL(u) falls strictly from +inf (u -> 0, when some mass has a positive gap) to 0 (u -> inf),
    so the root is unique; it is bracketed by rounds of an evenly spaced grid in log u (each round
    keeps the one cell where KL crosses r) and placed by linear interpolation inside the last cell.
    """
    lo = (gap * (q > 0)).max().clamp_min(1e-30).log() - _SPAN
    width = torch.full_like(lo, 2 * _SPAN)
    steps = torch.arange(_GRID, device=q.device, dtype=torch.float64) / (_GRID - 1)
    for _ in range(_ROUNDS):
        above = (_kl(lo + width * steps, q, gap) > r).sum().clamp(1, _GRID - 1)
        width = width / (_GRID - 1)
        lo = lo + (above - 1) * width
    k_lo, k_hi = _kl(torch.stack([lo, lo + width]), q, gap)
    frac = torch.where(k_lo > k_hi, ((k_lo - r) / (k_lo - k_hi)).clamp(0.0, 1.0), torch.ones_like(k_lo))
    return lo + frac * width


def _scaled(gap: Tensor) -> tuple[Tensor, Tensor]:
    """(gap / scale, scale) with scale = max gap (1 when every gap is 0): p(u) is unchanged when u and
    the gaps are scaled together, so the root search works the same for losses of any magnitude."""
    top = gap.max()
    scale = torch.where(top > 0, top, torch.ones_like(top))
    return gap / scale, scale


def kl_tilt(q: Tensor, gap: Tensor, r: float) -> Tensor:
    """The worst-case p with KL(q || p) <= r for losses l_j = l_max - gap_j: p_j ~ q_j / (u + gap_j)
    at the root u of KL(q || p(u)) = r (``_kl_root``), computed on gaps scaled to at most 1."""
    unit, _ = _scaled(gap)
    w = q / (_kl_root(q, unit, r).exp() + unit)
    return w / w.sum()


def kl_dual_value(q: Tensor, losses: Tensor, r: float) -> Tensor:
    """An upper bound on max {p @ losses : KL(q || p) <= r}: the Lagrangian dual
    g(lam, eta) = eta + lam (r - 1) - lam sum_j q_j log((eta - l_j) / lam), evaluated at the root
    u found by ``_kl_root`` (eta = l_max + u) and the lam that makes p sum to 1. Weak duality makes
    any (lam, eta) an upper bound, so the value is never below the exact maximum, whatever the
    root's numerical error (the interpolated primal p @ losses can sit ~1e-8 below it).

    At that (lam, eta) the dual equals, exactly, p @ l + lam (r - KL(q || p)) + lam (s - 1) with
    p_j = lam q_j / d_j and s = sum q; it is evaluated in that form (p @ l = l_max - p @ gap, KL by
    ``_kl``), whose terms are all small. The textbook form adds eta ~ l_max + 1/sqrt(r) and
    subtracts terms of the same size, which for r = 1e-12 put the bound 1.5e-13 below the exact
    maximum, beyond any rounding slack."""
    l_max = losses.max()
    gap = l_max - losses
    if r == 0 or not bool((gap * (q > 0)).max() > 0):
        return q @ losses  # no tilt is possible or allowed: the expectation itself
    unit, scale = _scaled(gap)
    log_u = _kl_root(q, unit, r)
    d = log_u.exp() + unit
    lam = 1.0 / (q / d).sum()
    p = lam * q / d
    kl = _kl(log_u.view(1), q, unit)[0]
    excess = q.sum() - 1.0
    return l_max - scale * ((p @ unit) - lam * (r - kl) - lam * excess)


def worst_case_weights(losses: Tensor, alpha: float, r: float) -> Tensor:
    """The HR (HD) worst-case weights of a batch: N non-negative weights that sum to 1.

    The extra atom's mass (the poisoned mass placed at the worst point) is merged into the first
    sample of largest loss. The HR loss value is ``weights @ losses``. Runs on the losses' device
    in float64 with a fixed sequence of operations; the one host synchronisation is the check that
    every loss is finite (``TrialFailed`` otherwise: the weights of a NaN or infinite loss are undefined,
    and a step taken with them would already have spread NaN into the weights).
    """
    if losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"losses must be a non-empty vector, got shape {tuple(losses.shape)}")
    if alpha < 0 or r < 0 or not (math.isfinite(alpha) and math.isfinite(r)):
        raise ValueError(f"alpha and r must be finite and >= 0, got alpha={alpha}, r={r}")
    l = losses.detach().to(torch.float64)
    if not bool(torch.isfinite(l).all()):  # one host sync per batch: the weights are undefined otherwise
        raise TrialFailed("HR: a per-sample loss is not finite (+inf or NaN); the worst-case weights are undefined")
    n = l.numel()
    q = torch.cat([trimmed_masses(l, alpha), l.new_tensor([min(alpha, 1.0)])])
    l_max, worst = l.max(dim=0)
    gap = l_max - torch.cat([l, l_max.view(1)])
    p = q if r == 0 else kl_tilt(q, gap, r)
    combined = p[:n].clone()
    combined.index_add_(0, worst.view(1), p[n:])
    return combined.to(losses.dtype)


def hr_bound(losses: Tensor, alpha: float, r: float) -> float:
    """The HR objective as a certificate: an upper bound on its exact value (the KL step's dual value
    at the root found, after the exact alpha trimming), in float64, raised by a relative 1e-12 so that
    rounding in the sums cannot put it below. Non-finite losses are refused."""
    l = losses.detach().to(torch.float64).flatten()
    if l.numel() == 0 or not bool(torch.isfinite(l).all()):
        raise TrialFailed("HR: a per-sample loss is not finite; the HR objective is undefined")
    q = torch.cat([trimmed_masses(l, alpha), l.new_tensor([min(alpha, 1.0)])])
    atoms = torch.cat([l, l.max().view(1)])
    value = float(kl_dual_value(q, atoms, r))
    return value + ROUNDING_SLACK * max(1.0, abs(value))


class HRParams(PGDParams):
    alpha: float = Field(0.05, ge=0, lt=1, description="poisoning budget: fraction of mass that may move anywhere")
    r: float = Field(0.1, ge=0, description="KL radius (statistical error)")
    eps: float = Field(0.0, ge=0, description="evasion radius in input space; 0 skips the attack")
    norm: Literal["l2", "linf"] = "l2"
    steps: int = Field(10, ge=1, le=1000)


@METHODS.register("hr")
class HolisticRobust(Method):
    """HR training; alpha = r = 0 is exactly ERM (eps = 0) or PGD adversarial training (eps > 0)."""

    @classmethod
    def threat_model(cls, params: MethodParams) -> tuple[str, float] | None:
        return pgd_threat_model(params)  # type: ignore[arg-type]

    Params = HRParams
    params: HRParams

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        p = self.params
        x_adv = pgd_points(p, model, x, y, self.context.bounds)
        if p.alpha == 0 and p.r == 0:
            return F.cross_entropy(model(x_adv), y)  # the same computation as ERM / PGD-AT
        losses = F.cross_entropy(model(x_adv), y, reduction="none")
        return worst_case_weights(losses.detach(), p.alpha, p.r) @ losses  # refuses a non-finite loss

    def final_metrics(self, model: nn.Module, splits: Splits, *, batch_size: int, seed: int) -> dict[str, float | str]:
        """HR's certificate check: the HR objective on the (observed) train split vs the clean
        test split's adversarial loss at the same eps."""
        train = self._losses(model, splits, splits.x_train, splits.y_train, batch_size, seed)
        test = self._losses(model, splits, splits.x_test, splits.y_test, batch_size, seed + 1)
        objective = hr_bound(train, self.params.alpha, self.params.r)
        test_loss = float(test.mean())
        holds = objective >= test_loss
        return {
            "test/hr_objective": objective,
            "test/hr_robust_loss": test_loss,
            "test/hr_bound_holds": float(holds),
            f"{TAG_PREFIX}hr.bound_holds": str(holds).lower(),
        }

    def _losses(self, model: nn.Module, splits: Splits, x: Tensor, y: Tensor, batch_size: int, seed: int) -> Tensor:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        out = []
        with eval_mode(model):
            for i in range(0, len(y), batch_size):
                xb, yb = splits.floats(x[i : i + batch_size]), y[i : i + batch_size]
                x_adv = pgd_points(self.params, model, xb, yb, self.context.bounds, gen)
                with torch.no_grad():
                    out.append(F.cross_entropy(model(x_adv), yb, reduction="none"))
        return torch.cat(out).to(torch.float64)

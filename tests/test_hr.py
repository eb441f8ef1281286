"""HR (Bennouna et al. 2023): the closed-form worst-case weights against an independent convex
program, the published reference values, the structural properties, and the exact reductions."""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from certstudy.methods import METHODS, MethodContext
from certstudy.methods.hr import HolisticRobust, HRParams, trimmed_masses, worst_case_weights


def cvxpy_primal(losses: np.ndarray, alpha: float, r: float) -> tuple[float, np.ndarray]:
    """The HR_Neural_Networks library's primal (shared/reference/hr.md section 1), solved tightly."""
    n = len(losses)
    p, q, s = cp.Variable(n + 1, nonneg=True), cp.Variable(n + 1, nonneg=True), cp.Variable(n, nonneg=True)
    worst = losses.max()
    objective = cp.Maximize(p[:n] @ losses + p[n] * worst)
    # KL(q || p) <= 0 is p == q: written as such, since the cone form is degenerate at r = 0
    kl = [p == q] if r == 0 else [cp.sum(cp.rel_entr(q, p)) <= r]
    cons = [cp.sum(p) == 1, q[:n] == 1.0 / n - s, q[n] == cp.sum(s), cp.sum(s) <= alpha, *kl]
    prob = cp.Problem(objective, cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, max_iter=1000)
    assert prob.status == cp.OPTIMAL, prob.status
    combined = np.asarray(p.value[:n]).copy()
    combined[int(np.argmax(losses))] += p.value[n]
    return float(prob.value), combined


def _random_cases(count: int) -> list[tuple[np.ndarray, float, float, bool]]:
    rng = np.random.default_rng(2023)
    cases = []
    for i in range(count):
        n = int(rng.choice([2, 3, 5, 8, 16, 32, 64, 128, 256]))
        losses = rng.gamma(2.0, 0.7, size=n)
        ties = i % 5 == 0
        if ties:  # repeated values, including at the maximum
            losses = np.round(losses * 2) / 2
            losses[: max(1, n // 4)] = losses.max()
        alpha = float(rng.choice([0.0, 0.01, 0.05, 0.2, 0.5, 0.9])) if i % 3 else float(rng.uniform(0, 0.99))
        r = float(rng.choice([0.0, 1e-3, 0.01, 0.1, 1.0, 3.0])) if i % 4 else float(10 ** rng.uniform(-3, 0.5))
        cases.append((losses, alpha, r, ties))
    return cases


CASES = _random_cases(60)


@pytest.mark.parametrize(
    "losses,alpha,r,ties", CASES, ids=[f"n{len(c[0])}-a{c[1]:.3g}-r{c[2]:.3g}{'-ties' if c[3] else ''}" for c in CASES]
)
def test_closed_form_matches_the_convex_program(losses: np.ndarray, alpha: float, r: float, ties: bool) -> None:
    ref_value, ref_weights = cvxpy_primal(losses, alpha, r)
    w = worst_case_weights(torch.tensor(losses), alpha, r).numpy()
    value = float(w @ losses)
    assert value == pytest.approx(ref_value, rel=1e-5, abs=1e-9)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0, abs=1e-12)
    unique = not ties and len(np.unique(losses)) == len(losses)
    if unique and r > 0:  # r = 0 with alpha mass on a partly trimmed sample is unique too, but the
        np.testing.assert_allclose(w, ref_weights, atol=1e-4)  # solver's weights are loose there
    if unique and r == 0:
        np.testing.assert_allclose(w, ref_weights, atol=1e-4)


LIB = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64)


@pytest.mark.parametrize(
    "alpha,r,value,weights",
    [
        (0.25, 0.0, 1.375, [0, 0.25, 0.25, 0.5]),
        (0.0, 0.1, 1.233988, [0.1498, 0.1745, 0.2197, 0.4561]),
        (0.25, 0.1, 1.645407, [0, 0.1280, 0.1626, 0.7094]),
        (0.0, 0.0, 0.9, [0.25, 0.25, 0.25, 0.25]),
    ],
)
def test_published_reference_cases(alpha: float, r: float, value: float, weights: list[float]) -> None:
    w = worst_case_weights(LIB, alpha, r)
    assert float(w @ LIB) == pytest.approx(value, abs=1e-6)
    np.testing.assert_allclose(w.numpy(), weights, atol=1e-4)


def test_value_lies_between_mean_and_max_and_never_decreases_in_alpha_or_r() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        l = torch.tensor(rng.exponential(1.0, size=int(rng.integers(2, 100))))
        grid_a, grid_r = [0, 0.01, 0.05, 0.1, 0.3, 0.6, 0.95], [0, 1e-3, 0.01, 0.1, 0.5, 2, 8]
        vals = np.array([[float(worst_case_weights(l, a, r) @ l) for r in grid_r] for a in grid_a])
        assert (vals >= float(l.mean()) - 1e-12).all() and (vals <= float(l.max()) + 1e-12).all()
        assert (np.diff(vals, axis=0) >= -1e-9).all() and (np.diff(vals, axis=1) >= -1e-9).all()


def test_edge_cases_exact() -> None:
    l = torch.tensor([0.3, 1.2, 0.7, 1.2, 0.1], dtype=torch.float64)
    assert float(worst_case_weights(l, 1.0, 0.0) @ l) == pytest.approx(1.2, abs=1e-15)  # alpha >= 1: the max
    assert float(worst_case_weights(l, 1.5, 0.3) @ l) == pytest.approx(1.2, abs=1e-12)
    assert float(worst_case_weights(l, 0.0, 0.0) @ l) == pytest.approx(float(l.mean()), abs=1e-15)
    same = torch.full((7,), 0.42, dtype=torch.float64)
    assert float(worst_case_weights(same, 0.3, 1.0) @ same) == pytest.approx(0.42, abs=1e-15)
    # r = 0: the lowest-loss alpha mass gets weight 0 and the argmax gets alpha extra (merged at the first max)
    w = worst_case_weights(l, 0.4, 0.0).numpy()
    np.testing.assert_allclose(w, [0.0, 0.6, 0.2, 0.2, 0.0], atol=1e-15)


def test_kl_budget_is_used_and_respected() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        l = torch.tensor(rng.gamma(1.5, 1.0, size=50))
        alpha, r = float(rng.uniform(0, 0.5)), float(10 ** rng.uniform(-3, 0.5))
        q = torch.cat([trimmed_masses(l, alpha), torch.tensor([alpha], dtype=torch.float64)])
        from certstudy.methods.hr import kl_tilt

        gap = l.max() - torch.cat([l, l.max().view(1)])
        p = kl_tilt(q, gap, r)
        kept = q > 0
        kl = float((q[kept] * (q[kept] / p[kept]).log()).sum())
        assert kl == pytest.approx(r, rel=1e-6)


def test_gradient_is_the_weighted_sum_of_per_sample_gradients() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    method = HolisticRobust(HRParams(alpha=0.1, r=0.2, eps=0.0), MethodContext(3, (6,), None, torch.device("cpu"), 1))
    model.zero_grad()
    method.loss(model, x, y).backward()
    got = [p.grad.clone() for p in model.parameters()]
    losses = F.cross_entropy(model(x), y, reduction="none")
    w = worst_case_weights(losses.detach(), 0.1, 0.2)
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(20):
        grads = torch.autograd.grad(losses[i], list(model.parameters()), retain_graph=True)
        for e, g in zip(expected, grads):
            e += w[i] * g
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("eps,baseline", [(0.0, "erm"), (0.1, "adversarial")])
def test_alpha_and_r_zero_reproduce_erm_and_pgd_at_exactly(eps: float, baseline: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    ctx = MethodContext(10, (1, 8, 8), (0.0, 1.0), torch.device("cpu"), 1)
    hr = HolisticRobust(HRParams(alpha=0.0, r=0.0, eps=eps, norm="linf", steps=5), ctx)
    base_cls = METHODS.get(baseline)
    base = base_cls(
        base_cls.Params(**({"eps": eps, "norm": "linf", "steps": 5} if baseline == "adversarial" else {})), ctx
    )
    torch.manual_seed(7)
    a = hr.loss(model, x, y)
    torch.manual_seed(7)
    b = base.loss(model, x, y)
    assert torch.equal(a, b)


def test_hr_trial_reports_its_certificate(tmp_path) -> None:
    from certstudy.trial import TrialConfig, run_trial

    cfg = TrialConfig.model_validate(
        {
            "method": {"name": "hr", "params": {"alpha": 0.1, "r": 0.1, "eps": 0.3, "steps": 3}},
            "training": {"epochs": 2},
            "evaluation": {"val_subset": 100, "test_subset": 100, "attack": {"steps": 2}},
            "model": {"name": "mlp", "params": {"width": 32}},
        }
    )
    final = run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path))
    assert final["test/hr_objective"] > 0 and final["test/hr_robust_loss"] > 0
    assert final["tags/hr.bound_holds"] == (
        "true" if final["test/hr_objective"] >= final["test/hr_robust_loss"] else "false"
    )
    assert math.isfinite(final["test/hr_bound_holds"])


def _exact_kl_max(q: torch.Tensor, l: torch.Tensor, r: float) -> float:
    """max {p @ l : KL(q || p) <= r} by 300 bisection steps on log u in float64 (reference only)."""
    gap = l.max() - l
    lo, hi = -80.0, 80.0
    for _ in range(300):
        mid = (lo + hi) / 2
        d = math.exp(mid) + gap
        p = q / d
        p = p / p.sum()
        kl = float((q[q > 0] * (q[q > 0] / p[q > 0]).log()).sum())
        lo, hi = (mid, hi) if kl > r else (lo, mid)
    d = math.exp(hi) + gap
    p = q / d
    return float((p / p.sum()) @ l)


@pytest.mark.parametrize(("alpha", "r"), [(0.05, 0.1), (0.0, 0.5), (0.2, 1e-4), (0.3, 2.0)])
def test_the_hr_certificate_is_the_dual_value_never_below_the_exact_objective(alpha: float, r: float) -> None:
    from certstudy.methods.hr import hr_bound, trimmed_masses

    gen = torch.Generator().manual_seed(7)
    for scale in (1e-3, 1.0, 50.0):
        l = torch.rand(300, generator=gen, dtype=torch.float64) * scale
        q = torch.cat([trimmed_masses(l, alpha), l.new_tensor([alpha])])
        exact = _exact_kl_max(q, torch.cat([l, l.max().view(1)]), r)
        bound = hr_bound(l, alpha, r)
        assert bound >= exact  # an upper bound, never the interpolated primal below it
        assert bound - exact <= 1e-6 * max(1.0, abs(exact))


def test_hr_weights_are_scale_invariant_and_defined_for_tiny_losses() -> None:
    l = torch.rand(100, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = worst_case_weights(l, 0.05, 0.1)
    for scale in (1e-60, 1e-30, 1e10):
        w = worst_case_weights(l * scale, 0.05, 0.1)
        assert torch.isfinite(w).all() and float((w - ref).abs().max()) < 1e-12, scale


def test_a_non_finite_loss_is_refused_with_a_reason() -> None:
    from certstudy.errors import TrialFailed
    from certstudy.methods.hr import hr_bound

    for bad in (math.inf, math.nan):
        with pytest.raises(TrialFailed, match="not finite"):
            hr_bound(torch.tensor([0.1, bad, 0.3], dtype=torch.float64), 0.05, 0.1)


def _mp_hr_value(losses: list[float], alpha: float, r: float, digits: int = 60) -> float:
    """The exact HR objective (alpha trimming, then the KL maximum) in 60-digit arithmetic (mpmath):
    the root of KL(q || p(u)) = r by bisection on u, then p @ l at it (reference only)."""
    import mpmath as mp

    mp.mp.dps = digits
    l = [mp.mpf(v) for v in losses]
    n = len(l)
    order = sorted(range(n), key=lambda i: l[i])
    q = [mp.mpf(1) / n] * n
    budget = mp.mpf(alpha)
    for i in order:
        take = min(budget, q[i])
        q[i] -= take
        budget -= take
    q.append(mp.mpf(alpha))
    l.append(max(l))
    l_max = max(l)
    gap = [l_max - v for v in l]

    def primal(u: mp.mpf) -> tuple[mp.mpf, mp.mpf]:
        w = [qi / (u + g) for qi, g in zip(q, gap)]
        total = mp.fsum(w)
        p = [wi / total for wi in w]
        kl = mp.fsum(qi * mp.log(qi / pi) for qi, pi in zip(q, p) if qi > 0)
        return kl, mp.fsum(pi * li for pi, li in zip(p, l))

    lo, hi = mp.mpf("1e-30"), mp.mpf("1e30")
    for _ in range(400):
        mid = mp.sqrt(lo * hi)
        lo, hi = (mid, hi) if primal(mid)[0] > r else (lo, mid)
    return float(primal(hi)[1])


@pytest.mark.parametrize("r", [1e-12, 1e-10, 1e-8, 1e-6, 1e-3])
def test_the_hr_certificate_holds_down_to_tiny_radii(r: float) -> None:
    """The dual used to cancel terms of size 1/sqrt(r) in float64 and fell below the exact value for
    r below about 3e-7 (r = 1e-12, losses [0, 1]: 0.5000007070913972 < 0.50000070710678119)."""
    from certstudy.methods.hr import hr_bound

    assert abs(_mp_hr_value([0.0, 1.0], 0.0, 1e-12) - 0.50000070710678119) < 1e-16
    gen = torch.Generator().manual_seed(5)
    cases = [([0.0, 1.0], 0.0), ([0.0, 1.0], 0.25)]
    cases += [(torch.rand(40, generator=gen, dtype=torch.float64).mul(3).tolist(), a) for a in (0.0, 0.1)]
    for losses, alpha in cases:
        exact = _mp_hr_value(losses, alpha, r)
        bound = hr_bound(torch.tensor(losses, dtype=torch.float64), alpha, r)
        assert bound >= exact, (losses[:3], alpha, r, bound, exact)
        assert bound - exact <= 1e-11 * max(1.0, abs(exact)), (alpha, r, bound - exact)


def test_worst_case_weights_refuse_a_non_finite_loss_themselves() -> None:
    from certstudy.errors import TrialFailed

    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(TrialFailed, match="not finite"):
            worst_case_weights(torch.tensor([0.1, bad, 0.3], dtype=torch.float64), 0.05, 0.1)

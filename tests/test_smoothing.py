"""Randomized smoothing: the checks of shared/reference/smoothing.md on counts, on toy classifiers
with known smoothed probabilities, and on the trained method."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm
from torch import nn

from certstudy.certify import ABSTAIN, CERTIFIERS, CertifierContext
from certstudy.certify.smoothing import (
    _lower,
    _two_sided,
    certify,
    cohen_radius,
    lower_confidence_bound,
    predict_from_counts,
    sample_counts,
    two_sided_radius,
    upper_confidence_bound,
)
from certstudy.methods import METHODS, MethodContext

# --- Clopper-Pearson and the radius on counts ------------------------------------------------


def test_lower_bound_is_the_beta_quantile_zero_at_zero_and_monotone() -> None:
    n, alpha = 500, 0.01
    values = [lower_confidence_bound(k, n, alpha) for k in range(n + 1)]
    assert values[0] == 0.0
    for k in (1, 7, 250, 499, 500):
        assert values[k] == pytest.approx(beta.ppf(alpha, k, n - k + 1), rel=1e-12)
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[n] == pytest.approx(alpha ** (1 / n), rel=1e-12)
    assert upper_confidence_bound(n, n, alpha) == 1.0
    assert upper_confidence_bound(3, n, alpha) == pytest.approx(beta.ppf(1 - alpha, 4, n - 3), rel=1e-12)


def test_reference_values_at_alpha_1e_3() -> None:
    assert lower_confidence_bound(100_000, 100_000, 1e-3) == pytest.approx(0.99993092, abs=1e-8)
    assert cohen_radius(100_000, 100_000, 1e-3, 1.0) == pytest.approx(3.8115, abs=1e-4)
    assert cohen_radius(50_000, 100_000, 1e-3, 1.0) == 0.0  # lower bound below 1/2: abstain
    for n, r_max in ((10_000, 3.20), (1_000, 2.46), (100, 1.50)):
        assert cohen_radius(n, n, 1e-3, 1.0) == pytest.approx(r_max, abs=0.01)


@pytest.mark.parametrize(
    ("p_a", "n", "alpha"), [(0.7, 100, 0.05), (0.9, 1000, 0.01), (0.99, 500, 0.05), (0.6, 2000, 0.1)]
)
def test_over_certification_rate_is_at_most_alpha(p_a: float, n: int, alpha: float) -> None:
    """Counts ~ Binomial(n, pA): the radius exceeds the true sigma * Phi^-1(pA) (the bound fails) in at most alpha of "
    "repeats."""
    rng = np.random.default_rng(0)
    k = rng.binomial(n, p_a, size=40_000)
    over = (_lower(k, n, alpha) > p_a).mean()
    assert over <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(k))


def test_reusing_the_estimation_sample_for_selection_over_certifies() -> None:
    """Two classes at pA = pB = 1/2 (true radius 0): picking the class from the same counts certifies
    far more than alpha of the time; an independent selection sample stays below alpha."""
    rng = np.random.default_rng(1)
    n, n0, alpha, reps = 1000, 100, 0.05, 40_000
    counts = rng.binomial(n, 0.5, size=reps)
    reused_top_count = np.maximum(counts, n - counts)  # argmax taken on the estimation counts
    selected_first = rng.binomial(n0, 0.5, size=reps) >= n0 / 2
    independent_top_count = np.where(selected_first, counts, n - counts)
    reused = (_lower(reused_top_count, n, alpha) >= 0.5).mean()
    independent = (_lower(independent_top_count, n, alpha) >= 0.5).mean()
    assert reused > 1.5 * alpha
    assert independent <= alpha


def test_two_sided_is_sound_on_multinomial_counts() -> None:
    """Counts ~ Multinomial(n, p): the two-sided radius exceeds the radius of the true p in at most alpha of repeats."""
    rng = np.random.default_rng(2)
    sigma, n, alpha = 0.5, 1000, 0.05
    for p in ([0.45, 0.12, 0.11, 0.1, 0.08, 0.07, 0.07], [0.6, 0.35, 0.05], [0.3, 0.25, 0.25, 0.2]):
        p = np.asarray(p)
        counts = rng.multinomial(n, p, size=20_000)
        true = sigma / 2 * (norm.ppf(p[0]) - norm.ppf(p[1:].max()))
        radius, ok = _two_sided(counts, np.zeros(len(counts), dtype=int), n, alpha, sigma, 0.5)
        over = (ok & (radius > true)).mean()
        assert over <= alpha + 3 * math.sqrt(alpha / len(counts))


def test_two_sided_beats_cohen_when_the_runner_up_is_small_and_is_never_below_cohen_at_its_own_level() -> None:
    spread = [1250] * 8 + [90_000, 0]
    assert two_sided_radius(spread, 8, 1e-3, 0.5) > 1.15 * cohen_radius(90_000, 100_000, 1e-3, 0.5)
    rng = np.random.default_rng(3)
    for _ in range(300):
        p = rng.dirichlet(np.full(6, 0.5))
        counts = rng.multinomial(2000, p)
        top = int(counts.argmax())
        cohen = cohen_radius(int(counts[top]), 2000, 0.5 * 1e-2, 1.0)  # Cohen at pA_lower's share of alpha
        two = two_sided_radius(counts, top, 1e-2, 1.0, split=0.5)
        if cohen > 0:
            assert two >= cohen - 1e-12


def test_predict_abstains_on_a_near_tie_and_answers_a_clear_majority() -> None:
    counts = torch.tensor([[490, 510, 0], [400, 0, 600]])
    assert predict_from_counts(counts, 0.001).tolist() == [ABSTAIN, 2]


# --- on classifiers ---------------------------------------------------------------------------


class Constant(nn.Module):
    def __init__(self, label: int, classes: int) -> None:
        super().__init__()
        self.label, self.classes = label, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(x),), self.label), self.classes).float()


class Linear2(nn.Module):
    """f(x) = 1[w.x + b > 0] as two logits."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)


class UniformRandom(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rand(len(x), self.classes)


def test_constant_classifier_radius_is_exactly_sigma_phi_inv_alpha_to_one_over_n() -> None:
    x = torch.rand(5, 8)
    sigma, n, alpha = 0.37, 2000, 1e-3
    out = certify(Constant(3, 10), x, sigma=sigma, n0=50, n=n, alpha=alpha, num_classes=10, batch_size=777, seed=0)
    expected = sigma * norm.ppf(alpha ** (1 / n))
    assert out.cohen_prediction.tolist() == [3] * 5
    assert torch.allclose(out.cohen_radius, torch.full((5,), expected, dtype=torch.float64), rtol=1e-12)
    assert predict_from_counts(out.counts, alpha).tolist() == [3] * 5


def test_linear_classifier_radius_is_below_the_true_distance_and_approaches_it() -> None:
    torch.manual_seed(0)
    d, sigma, alpha = 10, 0.5, 0.01
    w = torch.randn(d)
    x = torch.randn(40, d) * 0.3
    f = Linear2(w, 0.2)
    true = ((x @ w + 0.2).abs() / w.norm()).double()
    over = []
    for seed in range(25):  # 25 x 40 = 1,000 certifications
        out = certify(f, x, sigma=sigma, n0=100, n=1000, alpha=alpha, num_classes=2, batch_size=4096, seed=10 + seed)
        ok = ~torch.isnan(out.cohen_radius)
        over.append((ok & (out.cohen_radius > true)).double().mean().item())
    assert np.mean(over) <= alpha + 3 * math.sqrt(alpha / 1000)
    gaps = []
    for n in (100, 1_000, 100_000):
        out = certify(f, x, sigma=sigma, n0=100, n=n, alpha=alpha, num_classes=2, batch_size=50_000, seed=5)
        r = torch.nan_to_num(out.cohen_radius, nan=0.0)
        gaps.append((true - r).clamp(min=0).mean().item())
    assert gaps[0] > gaps[1] > gaps[2]
    # at n = 1e5 the gap is about sigma * z_alpha * sqrt(p(1-p)/n) / phi(Phi^-1(p)): <= 0.011 for
    # true radii below 2 sigma (p <= 0.977), growing as p -> 1 (points a near-tie made the n0
    # selection sample pick the wrong class abstain, as they should)
    near = (true < 2 * sigma) & ~torch.isnan(out.cohen_radius)
    r = torch.nan_to_num(out.cohen_radius, nan=0.0)
    assert near.sum() >= 30 and (true - r)[near].max() < 0.02


def test_uniform_random_classifier_abstains() -> None:
    torch.manual_seed(0)
    x = torch.rand(300, 4)
    out = certify(
        UniformRandom(10), x, sigma=0.25, n0=100, n=1000, alpha=0.01, num_classes=10, batch_size=10_000, seed=0
    )
    assert (out.cohen_prediction == ABSTAIN).double().mean() >= 0.99
    assert (out.two_sided_prediction == ABSTAIN).double().mean() >= 0.99


@pytest.mark.parametrize("batch_size", [1, 7, 100, 997, 5_000, 100_000])
def test_counts_sum_to_n_whatever_the_batch_size(batch_size: int) -> None:
    x = torch.rand(5, 3)
    counts = sample_counts(
        UniformRandom(4), x, 997, 0.5, num_classes=4, batch_size=batch_size, generator=torch.Generator().manual_seed(0)
    )
    assert counts.shape == (5, 4)
    assert counts.sum(dim=1).tolist() == [997] * 5


def test_several_points_per_batch_give_the_counts_of_one_point_at_a_time() -> None:
    """Packing points into one forward pass must not mix their counts up."""
    x = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.1, 0.0]])
    f = Linear2(torch.tensor([1.0, 0.0]), 0.0)
    packed = sample_counts(f, x, 400, 0.5, num_classes=2, batch_size=10_000, generator=torch.Generator().manual_seed(0))
    assert packed[0].tolist() == [400, 0] and packed[1].tolist() == [0, 400]
    assert 100 < packed[2, 1] < 300


# --- the certifier and the method -------------------------------------------------------------


def test_registered_certifier_reports_both_certificates_and_predict_extras() -> None:
    cls = CERTIFIERS.get("smoothing")
    cert = cls(
        cls.Params(sigma=0.25, n0=20, n=200, alpha=0.01, predict_n=100),
        CertifierContext(10, (8,), (0.0, 1.0), torch.device("cpu")),
    )
    result = cert.certify(Constant(1, 10), torch.rand(6, 8), torch.tensor([1, 1, 1, 0, 0, 0]), seed=0)
    assert [c.name for c in result.certificates] == ["smoothing", "smoothing_two_sided"]
    assert result.extras == {"smoothed_clean_acc": 0.5, "abstain_rate": 0.0}
    with pytest.raises(ValueError, match="sigma"):
        cls(cls.Params(), CertifierContext(10, (8,), None, torch.device("cpu"))).certify(
            Constant(1, 10), torch.rand(2, 8), torch.tensor([1, 1]), seed=0
        )


@pytest.mark.parametrize("regularizer", ["none", "adre", "consistency"])
def test_method_losses_are_finite_and_train(regularizer: str) -> None:
    torch.manual_seed(0)
    cls = METHODS.get("smoothing")
    method = cls(
        cls.Params(sigma=0.25, regularizer=regularizer), MethodContext(3, (4,), (0.0, 1.0), torch.device("cpu"), 1)
    )
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.rand(64, 4), torch.randint(0, 3, (64,))
    x = x + nn.functional.one_hot(y, 3).float() @ torch.eye(3, 4)  # separable classes
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(60):
        loss = method.loss(model, x, y)
        assert torch.isfinite(loss)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    assert cls.certifier_defaults(method.params) == {"smoothing": {"sigma": 0.25}}


def test_adre_term_is_floored_so_a_runaway_margin_stops_paying() -> None:
    """A net whose logits separate by thousands: the bare log G of the runner-up would be about -5000
    and keep pulling the logits apart (LeNet collapsed on MNIST that way); log(G + 1e-10) stops at
    log 1e-10 and its gradient vanishes there."""
    from certstudy.methods.smoothing import ADRE_LOG_FLOOR

    cls = METHODS.get("smoothing")
    lam = 0.5
    method = cls(
        cls.Params(sigma=0.01, regularizer="adre", k=2, **{"lambda": lam}),
        MethodContext(3, (4,), (0.0, 1.0), torch.device("cpu"), 1),
    )
    scale = torch.tensor(5000.0, requires_grad=True)

    class Runaway(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return scale * torch.tensor([1.0, 0.0, 0.0]).expand(len(x), 3)

    loss = method.loss(Runaway(), torch.rand(8, 4), torch.zeros(8, dtype=torch.long))
    loss.backward()
    assert loss.item() == pytest.approx(lam * ADRE_LOG_FLOOR, rel=1e-6)  # CE is 0 and the term sits on its floor
    assert abs(scale.grad.item()) < 1e-6  # no push to separate further


def test_method_params_defaults_follow_the_regularizer_and_accept_lambda() -> None:
    params = METHODS.get("smoothing").Params(regularizer="adre", **{"lambda": 0.3})
    assert (params.copies, params.weight) == (8, 0.3)
    consistency = METHODS.get("smoothing").Params(regularizer="consistency")
    assert (consistency.copies, consistency.weight) == (2, 10.0)


# --- inside a trial ---------------------------------------------------------------------------


def test_trial_reports_certified_metrics_and_curve_files_reproducibly(tmp_path) -> None:
    from certstudy.trial import TrialConfig, run_trial

    cfg = TrialConfig.model_validate(
        {
            "model": {"name": "mlp", "params": {"width": 64}},
            "method": {"name": "smoothing", "params": {"sigma": 0.25, "regularizer": "consistency", "lambda": 1.0}},
            "training": {"epochs": 3, "batch_size": 64, "lr": 3e-3},
            "evaluation": {
                "attack": {"norm": "l2", "eps": 0.25, "steps": 2},
                "val_subset": 100,
                "test_subset": 200,
                "certify_subset": 60,
                "certify_val_subset": 30,
                "certifiers": [{"name": "smoothing", "params": {"n0": 50, "n": 500, "alpha": 0.01}}],
            },
        }
    )
    files: dict[str, bytes] = {}

    def keep_files(metrics: dict, ckpt: str | None) -> None:
        if ckpt is None:
            return  # a report between saves
        root = Path(ckpt) / "artifacts"
        if root.is_dir():
            files.update({str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()})

    first = run_trial(cfg, keep_files, data_dir=str(tmp_path))
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    for cert in ("smoothing", "smoothing_two_sided"):
        for split in ("test", "val"):
            accs = [first[f"{split}/certified_acc_{cert}_l2_r{r:g}"] for r in grid]
            assert all(0.0 <= a <= 1.0 for a in accs) and accs == sorted(accs, reverse=True)
            assert 0.0 <= first[f"{split}/abstain_rate_{cert}"] <= 1.0 and first[f"{split}/acr_{cert}"] >= 0.0
    assert first["test/certified_acc_smoothing_l2_r0"] > 0.5  # digits at sigma = 0.25 after 3 epochs
    assert 0.0 <= first["test/smoothed_clean_acc"] <= 1.0 and 0.0 <= first["test/abstain_rate"] <= 1.0
    assert sorted(files) == [
        "certify/smoothing_curve.csv",
        "certify/smoothing_curve.png",
        "certify/smoothing_radii.csv",
    ]
    assert files["certify/smoothing_curve.png"].startswith(b"\x89PNG")
    rows = files["certify/smoothing_radii.csv"].decode().splitlines()
    assert rows[0] == "index,label,certificate,prediction,radius" and len(rows) == 1 + 2 * 60
    curve = [line.split(",") for line in files["certify/smoothing_curve.csv"].decode().splitlines()[1:]]
    at_zero = {c: float(acc) for c, _, r, acc in curve if float(r) == 0.0}
    assert at_zero["smoothing"] == pytest.approx(first["test/certified_acc_smoothing_l2_r0"])
    again = run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path))
    assert again == first


def test_certified_metrics_follow_cohens_reporting_conventions() -> None:
    """Radius >= r inclusive; abstentions and wrong predictions fail but stay in the denominator;
    ACR counts them as 0."""
    from certstudy.certify import Certificate, CertifyResult
    from certstudy.certify.metrics import certification_metrics, curve

    cert = Certificate(
        "c", "l2", torch.tensor([0, 1, ABSTAIN, 2]), torch.tensor([0.5, 0.25, math.nan, 0.1], dtype=torch.float64)
    )
    y = torch.tensor([0, 1, 1, 0])
    m = certification_metrics(
        "test", CertifyResult([cert], {"extra": 1.0}), y, {"l2": [0.0, 0.25, 0.5, 0.75], "linf": [0.1]}
    )
    assert m == {
        "test/certified_acc_c_l2_r0": 0.5,
        "test/certified_acc_c_l2_r0.25": 0.5,
        "test/certified_acc_c_l2_r0.5": 0.25,
        "test/certified_acc_c_l2_r0.75": 0.0,
        "test/acr_c": pytest.approx(0.75 / 4),
        "test/abstain_rate_c": 0.25,
        "test/extra": 1.0,
    }
    assert curve(cert, y) == ([0.0, 0.25, 0.5], [0.5, 0.5, 0.25])
